import { connect, type Socket } from 'node:net';
import { FerryError, type GuestAgentChannel } from '@ferry/core/plugin';

/**
 * A QEMU guest agent the runtimes talk to, whatever carries it: the agent's unix socket
 * (`QgaClient`) or a channel the source host hands over (`GuestOptions.agent` as a
 * `GuestAgentChannel`, e.g. libvirt's `qemu-agent-command`). Open one with `openQga`.
 */
export interface QgaConnection {
  /** For the report: `qga unix:PATH`, or the channel's label. */
  readonly label: string;
  /** Sends one command and resolves with its `return`; an `error` reply is `GUEST_STEP_FAILED`. */
  execute(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * Opens the guest agent `GuestOptions.agent` names: a `unix:PATH` socket (synced with `guest-sync`),
 * or a source host's channel (checked with `guest-ping`, so an agent that is not running fails here
 * rather than in the freeze).
 */
export async function openQga(agent: string | GuestAgentChannel, timeoutMs: number): Promise<QgaConnection> {
  if (typeof agent === 'string') return QgaClient.connect(agent.replace(/^unix:/, ''), timeoutMs);
  const c = new HostAgentConnection(agent);
  await c.execute('guest-ping', undefined, timeoutMs);
  return c;
}

/** A `GuestAgentChannel` as a `QgaConnection`: one command at a time, none after `close`. */
class HostAgentConnection implements QgaConnection {
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();

  constructor(private readonly channel: GuestAgentChannel) {}

  get label(): string {
    return this.channel.label;
  }

  execute(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    const run = (): Promise<unknown> => {
      if (this.closed) return Promise.reject(new FerryError('GUEST_UNREACHABLE', `the guest agent channel ${this.channel.label} is closed`));
      return this.channel.execute(command, args, timeoutMs);
    };
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  close(): Promise<void> {
    this.closed = true;
    return Promise.resolve();
  }
}

/**
 * A client of the QEMU guest agent's JSON protocol (`qemu-ga`, docs: QEMU's "QEMU Guest Agent
 * Protocol Reference") on the unix socket of the VM's agent channel. One command at a time, as the
 * agent answers in order. The agent keeps no notion of a connection, so a reply a previous client
 * left unread could be taken for ours: `connect` first sends `guest-sync` with a random id and
 * skips everything up to its reply.
 */
export class QgaClient implements QgaConnection {
  private buffer = '';
  private readonly waiting: { resolve: (v: unknown) => void; reject: (e: Error) => void }[] = [];
  private closed = false;
  private queue: Promise<unknown> = Promise.resolve();
  /** While `connect` syncs: the id whose reply ends the replies an earlier client left. */
  private syncing?: { id: number; resolve: () => void; reject: (e: Error) => void };

  private constructor(
    private readonly socket: Socket,
    readonly path: string,
  ) {
    socket.setEncoding('utf8');
    socket.on('data', (d: string) => this.onData(d));
    socket.on('close', () => this.fail(new FerryError('GUEST_UNREACHABLE', `the guest agent socket ${path} closed`)));
    socket.on('error', (err) => this.fail(new FerryError('GUEST_UNREACHABLE', `the guest agent socket ${path} failed: ${err.message}`)));
  }

  get label(): string {
    return `qga unix:${this.path}`;
  }

  static async connect(path: string, timeoutMs: number): Promise<QgaClient> {
    const socket = await new Promise<Socket>((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(s));
      s.once('error', (err) => reject(new FerryError('GUEST_UNREACHABLE', `cannot open the guest agent socket ${path}: ${err.message}`)));
    });
    const c = new QgaClient(socket, path);
    // 0xFF makes the agent drop any half-read command an earlier client left behind
    socket.write(Buffer.from([0xff]));
    // Replies an earlier client left unread come first: one guest-sync, then every reply up to the
    // one carrying our id is dropped (QEMU's guest agent protocol reference, "guest-sync").
    const id = Math.floor(Math.random() * 2 ** 31);
    try {
      await c.sync(id, timeoutMs);
    } catch (err) {
      await c.close();
      if (err instanceof FerryError && err.code === 'GUEST_TIMEOUT') {
        throw new FerryError('GUEST_UNREACHABLE', `the guest agent on ${path} did not answer guest-sync within ${timeoutMs} ms (is qemu-ga running in the guest?)`);
      }
      throw err;
    }
    return c;
  }

  /** Sends `guest-sync` with `id` and resolves when its reply comes, skipping every reply before it. */
  private sync(id: number, timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new FerryError('GUEST_TIMEOUT', `the guest agent did not answer guest-sync within ${timeoutMs} ms`)), timeoutMs);
      this.syncing = {
        id,
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      this.socket.write(JSON.stringify({ execute: 'guest-sync', arguments: { id } }) + '\n');
    });
  }

  /** Sends one command and resolves with its `return`; an `error` reply is `GUEST_STEP_FAILED`. */
  execute(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    const run = (): Promise<unknown> =>
      new Promise<unknown>((resolve, reject) => {
        if (this.closed) return reject(new FerryError('GUEST_UNREACHABLE', `the guest agent socket ${this.path} is closed`));
        const entry = { resolve, reject };
        const timer = setTimeout(() => {
          const i = this.waiting.indexOf(entry);
          // a late reply would be taken for the next command's: this client is done
          if (i >= 0) this.fail(new FerryError('GUEST_TIMEOUT', `the guest agent did not answer ${command} within ${timeoutMs} ms`));
        }, timeoutMs);
        entry.resolve = (v) => (clearTimeout(timer), resolve(v));
        entry.reject = (e) => (clearTimeout(timer), reject(e));
        this.waiting.push(entry);
        this.socket.write(JSON.stringify({ execute: command, ...(args && { arguments: args }) }) + '\n');
      });
    const p = this.queue.then(run, run);
    this.queue = p.catch(() => undefined);
    return p;
  }

  close(): Promise<void> {
    this.closed = true;
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.once('close', () => resolve());
      this.socket.end();
      setTimeout(() => (this.socket.destroy(), resolve()), 1000).unref();
    });
  }

  private onData(d: string): void {
    this.buffer += d;
    if (this.buffer.length > 64 * 1024 * 1024) return this.fail(new FerryError('GUEST_STEP_FAILED', 'the guest agent sent an over-long reply'));
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).replace(/^[\xff\ufffd]+/, '').trim();
      this.buffer = this.buffer.slice(nl + 1);
      if (!line) continue;
      let msg: { return?: unknown; error?: { class?: string; desc?: string } };
      try {
        msg = JSON.parse(line) as typeof msg;
      } catch {
        continue; // a partial line of an earlier client
      }
      if (this.syncing) {
        if (msg.return === this.syncing.id) {
          const done = this.syncing;
          this.syncing = undefined;
          done.resolve();
        }
        continue; // an earlier client's reply (or the agent's answer to the 0xFF reset)
      }
      const w = this.waiting.shift();
      if (!w) continue;
      if (msg.error) w.reject(new FerryError('GUEST_STEP_FAILED', `the guest agent refused: ${msg.error.class ?? 'Error'}: ${msg.error.desc ?? ''}`));
      else w.resolve(msg.return);
    }
  }

  private fail(err: FerryError): void {
    if (this.closed && this.waiting.length === 0 && !this.syncing) return;
    this.closed = true;
    const sync = this.syncing;
    this.syncing = undefined;
    sync?.reject(err);
    for (const w of this.waiting.splice(0)) w.reject(err);
    this.socket.destroy();
  }
}
