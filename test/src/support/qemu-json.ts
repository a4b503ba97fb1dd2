/**
 * JSON over a unix socket: the QEMU guest agent client and one-shot QMP commands, for tests.
 */
import net from 'node:net';

type JsonMessage = Record<string, unknown>;

/** One newline-delimited JSON connection; `next` hands out messages in order, bounded by a deadline. */
class JsonConnection {
  private readonly queue: JsonMessage[] = [];
  private waiter?: { resolve: (m: JsonMessage) => void; reject: (e: Error) => void };
  private buffer = '';
  private failure?: Error;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.receive(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  static open(socketPath: string, timeoutMs: number): Promise<JsonConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(socketPath);
      const timer = setTimeout(() => (socket.destroy(), reject(new Error(`connecting to ${socketPath} timed out`))), timeoutMs);
      socket.once('error', (err) => (clearTimeout(timer), reject(err)));
      socket.once('connect', () => (clearTimeout(timer), resolve(new JsonConnection(socket))));
    });
  }

  send(message: JsonMessage | Buffer): void {
    this.socket.write(Buffer.isBuffer(message) ? message : JSON.stringify(message) + '\n');
  }

  next(timeoutMs: number, what: string): Promise<JsonMessage> {
    const ready = this.queue.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => ((this.waiter = undefined), reject(new Error(`${what}: no answer within ${timeoutMs} ms`))), timeoutMs);
      const settle = <T>(fn: (v: T) => void) => (v: T): void => (clearTimeout(timer), (this.waiter = undefined), fn(v));
      this.waiter = { resolve: settle(resolve), reject: settle(reject) };
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private receive(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      let message: JsonMessage;
      try {
        message = JSON.parse(line) as JsonMessage;
      } catch {
        continue; // the agent's reply to our 0xFF parser reset, or noise
      }
      if (this.waiter) this.waiter.resolve(message);
      else this.queue.push(message);
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.waiter?.reject(err);
  }
}

/** An error the agent or QMP answered with; `errorClass` is QEMU's class, e.g. `GenericError`. */
export class QemuCommandError extends Error {
  override readonly name = 'QemuCommandError';
  constructor(readonly command: string, readonly errorClass: string, desc: string) {
    super(`${command}: ${errorClass}: ${desc}`);
  }
}

function unwrap<T>(command: string, reply: JsonMessage): T {
  if ('error' in reply) {
    const e = reply.error as { class?: string; desc?: string };
    throw new QemuCommandError(command, e.class ?? 'Error', e.desc ?? JSON.stringify(reply.error));
  }
  return reply.return as T;
}

export interface AgentCallOptions {
  /** Bound on the whole exchange (sync and command); default 10 s. */
  timeoutMs?: number;
  /** For commands the agent never answers on success (`guest-shutdown`, `guest-suspend-*`). */
  noReply?: boolean;
}

/**
 * A minimal QEMU guest agent client. QGA has no greeting and may hold stale replies (of a timed-out
 * call, or queued while the guest was booting), so every call first sends a 0xFF byte (resets the
 * agent's JSON parser) and `guest-sync` with a fresh id, and drops everything up to that id's echo.
 * Calls are serialized over one connection, which is reopened after any failure.
 */
export class GuestAgentClient {
  private conn?: JsonConnection;
  private chain: Promise<unknown> = Promise.resolve();
  private nextId = Math.floor(Math.random() * 1_000_000_000);

  constructor(readonly socketPath: string) {}

  execute<T = unknown>(command: string, args?: JsonMessage, opts: AgentCallOptions = {}): Promise<T> {
    const call = this.chain.then(() => this.exchange<T>(command, args, opts));
    this.chain = call.catch(() => undefined);
    return call;
  }

  close(): void {
    this.conn?.close();
    this.conn = undefined;
  }

  private async exchange<T>(command: string, args: JsonMessage | undefined, opts: AgentCallOptions): Promise<T> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    const left = (): number => Math.max(1, deadline - Date.now());
    try {
      this.conn ??= await JsonConnection.open(this.socketPath, left());
      const id = this.nextId++;
      this.conn.send(Buffer.from([0xff]));
      this.conn.send({ execute: 'guest-sync', arguments: { id } });
      // skip stale replies until our sync id comes back
      while ((await this.conn.next(left(), `${command} (guest-sync)`)).return !== id) continue;
      this.conn.send(args ? { execute: command, arguments: args } : { execute: command });
      if (opts.noReply) return undefined as T;
      return unwrap<T>(command, await this.conn.next(left(), command));
    } catch (err) {
      if (!(err instanceof QemuCommandError)) this.close();
      throw err;
    }
  }
}

/** Runs one QMP command on a fresh connection (greeting, `qmp_capabilities`, command), skipping events. */
export async function qmpCommand<T = unknown>(socketPath: string, command: string, args?: JsonMessage, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const conn = await JsonConnection.open(socketPath, left());
  const reply = async (what: string): Promise<JsonMessage> => {
    for (;;) {
      const m = await conn.next(left(), what);
      if (!('event' in m)) return m;
    }
  };
  try {
    await conn.next(left(), 'QMP greeting');
    conn.send({ execute: 'qmp_capabilities' });
    unwrap(command, await reply('qmp_capabilities'));
    conn.send(args ? { execute: command, arguments: args } : { execute: command });
    return unwrap<T>(command, await reply(command));
  } finally {
    conn.close();
  }
}
