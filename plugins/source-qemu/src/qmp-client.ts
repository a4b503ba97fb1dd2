import { EventEmitter } from 'node:events';
import net from 'node:net';
import { FerryError, type ErrorLocation } from '@ferry/core/plugin';
import { connectOptions, formatAddress, parseAddress, type SocketAddress } from './socket-address.js';

/** An asynchronous QMP event, numbered in arrival order so callers can wait for one "since" a mark. */
export interface QmpEvent {
  seq: number;
  event: string;
  data: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export interface QmpConnectOptions {
  /** How long to wait for the connection and the greeting. A monitor serves one client at a time, so a
   *  busy monitor shows up as a missing greeting. Default 10 s. */
  connectTimeoutMs?: number;
  /** Default answer timeout of each command. Default 30 s. */
  commandTimeoutMs?: number;
  /** Location facts added to every error (job file position, VM). */
  where?: ErrorLocation;
}

/** QEMU refused a command: the QMP error class (`GenericError`, `DeviceNotFound`, ...) and description. */
export class QmpCommandError extends FerryError {
  constructor(
    readonly command: string,
    readonly errorClass: string,
    readonly description: string,
    where: ErrorLocation,
  ) {
    super('PLUGIN_FAILED', `QMP command ${command} failed: ${errorClass}: ${description}`, where);
  }
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

/** How many events are kept for `waitForEvent(..., since)`; enough for any one operation's burst. */
const EVENT_HISTORY = 512;

/**
 * A QMP (QEMU Machine Protocol) client over a unix socket or TCP. Commands carry ids and their
 * answers are matched by id; events are kept (bounded) and emitted as `'event'`, so a caller can
 * take a mark, run a command, and then wait for an event the command caused even if QEMU sent the
 * event before the command's answer.
 */
export class QmpClient extends EventEmitter {
  readonly label: string;
  version?: { major: number; minor: number; micro: number };
  private readonly pending = new Map<string, Pending>();
  private readonly events: QmpEvent[] = [];
  private buffered = '';
  private nextId = 1;
  private nextSeq = 1;
  private closedError?: FerryError;

  private constructor(
    private readonly socket: net.Socket,
    readonly address: SocketAddress,
    private readonly opts: Required<Omit<QmpConnectOptions, 'where'>> & { where: ErrorLocation },
  ) {
    super();
    this.label = `qemu:${formatAddress(address)}`;
  }

  /** Connects, reads the greeting and leaves capabilities negotiation mode. */
  static async connect(address: string | SocketAddress, opts: QmpConnectOptions = {}): Promise<QmpClient> {
    const addr = typeof address === 'string' ? parseAddress(address, opts.where) : address;
    const full = { connectTimeoutMs: 10_000, commandTimeoutMs: 30_000, where: {}, ...opts };
    const socket = net.connect(connectOptions(addr));
    const client = new QmpClient(socket, addr, full);
    try {
      await client.handshake();
      await client.execute('qmp_capabilities');
    } catch (err) {
      socket.destroy();
      throw err;
    }
    return client;
  }

  private handshake(): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (detail: string): void => {
        clearTimeout(timer);
        reject(this.unreachable(detail));
      };
      const timer = setTimeout(
        () => fail(`no QMP greeting within ${this.opts.connectTimeoutMs} ms (is another client holding the monitor?)`),
        this.opts.connectTimeoutMs,
      );
      this.socket.once('error', (err: NodeJS.ErrnoException) => fail(`cannot connect: ${err.code ?? err.message}`));
      this.socket.setEncoding('utf8');
      this.socket.on('data', (chunk: string) => this.onData(chunk));
      this.socket.on('close', () => this.onClose());
      this.once('greeting', (g: { version?: { qemu?: QmpClient['version'] } }) => {
        clearTimeout(timer);
        this.version = g.version?.qemu;
        this.socket.on('error', () => undefined); // reported through 'close' to pending commands
        resolve();
      });
      this.once('closed-early', () => fail('the connection closed before the QMP greeting'));
    });
  }

  /** Runs one command and resolves with its `return` value. */
  execute<T = unknown>(command: string, args?: Record<string, unknown>, opts: { timeoutMs?: number } = {}): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    const id = `ferry-${this.nextId++}`;
    const timeoutMs = opts.timeoutMs ?? this.opts.commandTimeoutMs;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(this.unreachable(`QMP command ${command} got no answer within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, { command, resolve: resolve as (v: unknown) => void, reject, timer });
      this.socket.write(`${JSON.stringify({ execute: command, ...(args && { arguments: args }), id })}\n`);
    });
  }

  /** Commands sent on this connection so far (`qmp_capabilities` included). */
  get commandsSent(): number {
    return this.nextId - 1;
  }

  /** Sequence number of the newest event so far: pass it as `since` to see only later events. */
  eventMark(): number {
    return this.nextSeq - 1;
  }

  /**
   * Resolves with the first event named `name` after `since` (default: from now on) for which
   * `predicate` holds; rejects with SOURCE_UNREACHABLE after `timeoutMs` or when the connection closes.
   */
  waitForEvent(name: string, predicate: (data: Record<string, unknown>) => boolean, timeoutMs: number, since = this.eventMark()): Promise<QmpEvent> {
    const match = (e: QmpEvent): boolean => e.seq > since && e.event === name && predicate(e.data);
    const seen = this.events.find(match);
    if (seen) return Promise.resolve(seen);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => {
      const cleanup = (): void => {
        clearTimeout(timer);
        this.off('event', onEvent);
        this.off('close', onClose);
      };
      const onEvent = (e: QmpEvent): void => {
        if (!match(e)) return;
        cleanup();
        resolve(e);
      };
      const onClose = (): void => {
        cleanup();
        reject(this.closedError);
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(this.unreachable(`QMP event ${name} did not arrive within ${timeoutMs} ms`));
      }, timeoutMs);
      this.on('event', onEvent);
      this.on('close', onClose);
    });
  }

  /** Closes the connection; pending commands fail with SOURCE_UNREACHABLE. Safe to call twice. */
  async close(): Promise<void> {
    if (this.socket.destroyed) return;
    await new Promise<void>((resolve) => {
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => this.socket.destroy(), 1000).unref();
    });
  }

  private onData(chunk: string): void {
    this.buffered += chunk;
    let nl: number;
    while ((nl = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, nl).trim();
      this.buffered = this.buffered.slice(nl + 1);
      if (line) this.onMessage(line);
    }
  }

  private onMessage(line: string): void {
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return; // not QMP; a monitor never sends this, and dropping it keeps the stream usable
    }
    if ('QMP' in msg) {
      this.emit('greeting', msg.QMP);
    } else if (typeof msg.event === 'string') {
      this.onEvent(msg);
    } else if (typeof msg.id === 'string') {
      this.onAnswer(msg.id, msg);
    }
  }

  private onEvent(msg: Record<string, unknown>): void {
    const e: QmpEvent = {
      seq: this.nextSeq++,
      event: msg.event as string,
      data: (msg.data ?? {}) as Record<string, unknown>,
      timestamp: msg.timestamp as QmpEvent['timestamp'],
    };
    this.events.push(e);
    if (this.events.length > EVENT_HISTORY) this.events.shift();
    this.emit('event', e);
  }

  private onAnswer(id: string, msg: Record<string, unknown>): void {
    const p = this.pending.get(id);
    if (!p) return; // answer to a command that already timed out
    this.pending.delete(id);
    clearTimeout(p.timer);
    const error = msg.error as { class?: string; desc?: string } | undefined;
    if (error) p.reject(new QmpCommandError(p.command, error.class ?? 'GenericError', error.desc ?? '', this.where()));
    else p.resolve(msg.return);
  }

  private onClose(): void {
    this.closedError ??= this.unreachable('the QMP connection closed');
    if (this.version === undefined) this.emit('closed-early');
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(this.unreachable(`the QMP connection closed while ${p.command} was running`));
    }
    this.pending.clear();
    this.emit('close');
  }

  private where(): ErrorLocation {
    return { ...this.opts.where, host: this.label };
  }

  private unreachable(detail: string): FerryError {
    return new FerryError('SOURCE_UNREACHABLE', `${detail} (QMP at ${formatAddress(this.address)})`, this.where());
  }
}

/** True for a QMP error whose class or description says the object is not there (already gone). */
export function isNotFound(err: unknown): boolean {
  if (!(err instanceof QmpCommandError)) return false;
  return err.errorClass === 'DeviceNotFound' || err.errorClass === 'DeviceNotActive' || /not found|cannot find|failed to find/i.test(err.description);
}
