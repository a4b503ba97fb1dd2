import { FerryError, type ErrorLocation } from '../../errors.js';
import { recordBlocks, type BlockRecord } from '../../pipe/block-record.js';
import type { BlockStore } from '../../repository/block-store.js';
import { BusyMeter } from '../../pipe/stage-meter.js';
import type { BlockVerifier } from './block-verifier.js';
import { connect, type ConnectOptions, type Connection, type PeerAuth, type WireMessage } from '../wire/index.js';
import { errorFromWire, fromHex, pipeMessageProblem, receiveOrFail, unexpected, type ReadTask, type TaskInfo, type TaskSummary } from './protocol.js';

export interface ProxyPipeOptions {
  /** Proxy address `host:port`. */
  address: string;
  auth: PeerAuth;
  task: Omit<ReadTask, 'resumeFrom'>;
  /** Answers the proxy's `known?` questions (the session's repository). */
  blocks: BlockStore;
  /** Checks every new block against the id the proxy names for it before the target mover sees it. */
  verifier: BlockVerifier;
  /** How long to keep trying to reach the proxy again after the pipe dropped. */
  retryWindowMs: number;
  heartbeatMs?: number;
  signal?: AbortSignal;
  onProgress?: (doneBytes: number) => void;
  /** Opens the connection (default: the wire layer's `connect`; tests pass in-memory pairs). */
  dial?: Dial;
}

export type Dial = (opts: ConnectOptions) => Promise<Connection>;

/** Wire errors after which trying again cannot help (a wrong peer, another protocol version). */
const PERMANENT = new Set(['PIPE_AUTH', 'PIPE_VERSION']);
/** Errors the proxy reported itself (a refused task, a read failure): never retried. */
const REPORTED = new WeakSet<Error>();

function reported(err: FerryError): FerryError {
  REPORTED.add(err);
  return err;
}

/**
 * The repository service's end of one disk's data pipe: connects to the proxy, sends the read task
 * and turns the proxy's messages back into the `BlockRecord`s the `TargetMover` consumes. When the
 * connection drops it connects again (within `retryWindowMs`) and resumes from the first record it
 * has not kept; the target mover does not notice.
 */
export class ProxyPipe {
  info?: TaskInfo;
  summary?: TaskSummary;
  reconnects = 0;
  /** Time the target side spent on records (checks, dedup, storing, waiting for pack uploads). */
  readonly targetBusy = new BusyMeter();
  private conn?: Connection;
  private inbox?: Inbox;
  /** The next record the repository has not kept. */
  private next = 0;
  private readonly where: ErrorLocation;

  constructor(private readonly opts: ProxyPipeOptions) {
    this.where = { vm: opts.task.vm, disk: opts.task.disk.name };
    // The session ended (control connection gone, service stopping): stop the proxy reading at once.
    opts.signal?.addEventListener('abort', () => void this.conn?.close('the session ended').catch(() => undefined), { once: true });
  }

  /** Where an error the proxy reports happened: on the proxy the job names (its address as `host`). */
  private proxyWhere(): ErrorLocation {
    return { ...this.where, host: this.opts.address };
  }

  /** Connects, sends the task and waits for the proxy's answer (transport, size, mode). */
  async start(): Promise<TaskInfo> {
    await this.open(false);
    return this.info!;
  }

  async *records(): AsyncGenerator<BlockRecord> {
    const { blockSize } = this.opts.task;
    const size = this.info!.sizeBytes;
    const count = Math.ceil(size / blockSize);
    const lengthOf = (i: number, n = 1): number => Math.min(n * blockSize, size - i * blockSize);
    const ackEvery = Math.max(1, Math.floor(this.opts.task.window / 4));
    let lastAck = 0;
    let done = 0;
    try {
      for (;;) {
        let m: WireMessage;
        let checked: Promise<void> | undefined;
        try {
          this.checkAbort();
          ({ m, checked } = await this.inbox!.next());
        } catch (err) {
          this.checkAbort();
          if (!this.transient(err)) throw err;
          await this.open(true, err as Error);
          lastAck = this.next;
          continue;
        }
        const out: BlockRecord[] = [];
        switch (m.type) {
          case 'block':
            // Waiting for the check is target-side time. Never retried: a network cannot produce a
            // block that passed the frame's CRC and TLS.
            if (checked) await this.targetBusy.time(() => checked);
            out.push({ kind: 'data', index: Number(m.header?.i), length: 0, hash: fromHex(m.header?.h, 'a block hash'), encoded: asBuffer(m.body) });
            break;
          case 'known':
            out.push({ kind: 'known', index: Number(m.header?.i), length: 0, hash: fromHex(m.header?.h, 'a block hash') });
            break;
          case 'run': {
            const i = Number(m.header?.i);
            const n = Number(m.header?.n);
            if (!Number.isInteger(n) || n < 1 || i + n > count) throw unexpected(m, 'a run inside the disk', this.where);
            // One record for the whole run: the target mover fills the map for it in one step.
            out.push(m.header?.k === 'unchanged' ? { kind: 'unchanged', index: i, length: 0, count: n } : { kind: 'zero', index: i, length: 0, read: m.header?.read === true, count: n });
            break;
          }
          case 'end':
            if (this.next !== count) throw new FerryError('PIPE_PROTOCOL', `the proxy ended the disk after ${this.next} of ${count} blocks`, this.where);
            this.summary = checkedHeader(m, this.where) as unknown as TaskSummary;
            await this.conn!.send({ type: 'done' }).catch(() => undefined);
            return;
          case 'error':
            throw errorFromWire(m.header?.error as never, this.proxyWhere());
          default:
            throw unexpected(m, 'a block record', this.where);
        }
        for (const rec of out) {
          if (rec.index !== this.next) {
            throw new FerryError('PIPE_PROTOCOL', `the proxy sent block ${rec.index} where block ${this.next} was due`, this.where);
          }
          const n = recordBlocks(rec);
          rec.length = lengthOf(rec.index, n);
          this.targetBusy.start();
          try {
            yield rec;
          } finally {
            this.targetBusy.end();
          }
          this.next += n;
          done += rec.length;
        }
        // The target mover asked for the next record: it has stored (copied) this block, and its
        // check finished before it was yielded, so the frame's memory may take a later block.
        m.release?.();
        this.opts.onProgress?.(done);
        if (this.next - lastAck >= ackEvery) {
          lastAck = this.next;
          await this.conn!.send({ type: 'ack', header: { upTo: this.next } }).catch(() => undefined);
        }
      }
    } finally {
      await this.conn?.close().catch(() => undefined);
    }
  }

  /** Connects (again) within the retry window and sends the task from the next record not kept. */
  private async open(resume: boolean, cause?: Error): Promise<void> {
    await this.conn?.close().catch(() => undefined);
    this.conn = undefined;
    const deadline = Date.now() + this.opts.retryWindowMs;
    let delay = 100;
    let last: Error | undefined = cause;
    for (let attempt = 0; ; attempt++) {
      this.checkAbort();
      try {
        const conn = await (this.opts.dial ?? connect)({
          address: this.opts.address,
          auth: this.opts.auth,
          expectRole: 'proxy',
          timeoutMs: Math.max(1000, Math.min(10_000, deadline - Date.now())),
          heartbeatMs: this.opts.heartbeatMs,
          signal: this.opts.signal,
        });
        try {
          // The version this connection agreed on: a proxy of version 1 refuses any other.
          await conn.send({ type: 'task', header: { ...this.opts.task, version: conn.version, resumeFrom: this.next } });
          const m = await receiveOrFail(conn, 'the answer to the read task', this.where);
          if (m.type === 'error') throw reported(errorFromWire(m.header?.error as never, this.proxyWhere()));
          if (m.type !== 'task.ok') throw unexpected(m, 'task.ok', this.where);
          const info = checkedHeader(m, this.where) as unknown as TaskInfo;
          if (this.info && (info.sizeBytes !== this.info.sizeBytes || info.mode !== this.info.mode)) {
            throw new FerryError('REMOTE_RESUME_FAILED', `the disk looks different after reconnecting (${info.sizeBytes} bytes, ${info.mode})`, this.where);
          }
          this.info ??= info;
        } catch (err) {
          await conn.close().catch(() => undefined);
          throw err;
        }
        this.conn = conn;
        this.inbox = new Inbox(conn, this.opts, this.where, this.info!.sizeBytes);
        if (resume) this.reconnects++;
        return;
      } catch (err) {
        if (!this.transient(err)) throw err;
        last = err as Error;
      }
      if (Date.now() + delay > deadline) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(2000, delay * 2);
    }
    const what = resume ? `the data pipe dropped at block ${this.next} and` : 'the proxy';
    throw new FerryError(
      'REMOTE_RESUME_FAILED',
      `${what} could not be reached at ${this.opts.address} within ${Math.round(this.opts.retryWindowMs / 1000)} s (${last?.message ?? 'no answer'})`,
      { ...this.where, host: this.opts.address },
      { cause: last },
    );
  }

  private transient(err: unknown): boolean {
    if (this.opts.signal?.aborted || REPORTED.has(err as Error)) return false;
    const code = (err as { code?: string })?.code ?? '';
    if (err instanceof FerryError) return code.startsWith('PIPE_') && !PERMANENT.has(code);
    // socket errors that the wire layer did not wrap (ECONNRESET, ECONNREFUSED, EPIPE, ...)
    return typeof code === 'string' && /^E[A-Z]+$/.test(code);
  }

  private checkAbort(): void {
    if (this.opts.signal?.aborted) {
      throw new FerryError('SESSION_INTERRUPTED', 'the backup server ended the session; this disk gets no restore point', this.where);
    }
  }
}

/** A record as it waits for the target mover; a new block's check runs meanwhile. */
interface Received {
  m: WireMessage;
  checked?: Promise<void>;
}

/**
 * Reads one connection ahead of the target mover: the proxy's `known?` questions are answered at
 * once (so the proxy keeps compressing while the target stores), new blocks are checked against
 * their ids on the worker threads as they arrive, records wait in order. The queue is bounded by
 * the proxy's in-flight window (data blocks are acknowledged only once kept).
 */
class Inbox {
  private readonly queue: (Received | Error)[] = [];
  private waiter?: () => void;
  private readonly blocks: BlockStore;

  constructor(
    private readonly conn: Connection,
    private readonly opts: Pick<ProxyPipeOptions, 'blocks' | 'verifier' | 'address' | 'task'>,
    private readonly where: ErrorLocation,
    private readonly sizeBytes: number,
  ) {
    this.blocks = opts.blocks;
    void this.read();
  }

  async next(): Promise<Received> {
    while (this.queue.length === 0) await new Promise<void>((r) => (this.waiter = r));
    const m = this.queue.shift()!;
    if (m instanceof Error) throw m;
    return m;
  }

  private push(m: Received | Error): void {
    this.queue.push(m);
    const w = this.waiter;
    this.waiter = undefined;
    w?.();
  }

  private async read(): Promise<void> {
    try {
      for (;;) {
        const m = await receiveOrFail(this.conn, 'the next record', this.where);
        if (m.type === 'known?') {
          void this.answer(m);
          continue;
        }
        this.push(m.type === 'block' ? { m, checked: this.check(m) } : { m });
        if (m.type === 'end' || m.type === 'error') return;
      }
    } catch (err) {
      this.push(err as Error);
    }
  }

  /**
   * A block the repository does not hold yet must be what its id says; one it holds is a dedup hit
   * (nothing of it is stored) and needs no check. Awaited in order by `records`; a rejection is
   * handled there, or dropped with the connection.
   */
  private check(m: WireMessage): Promise<void> {
    const { blockSize } = this.opts.task;
    const i = Number(m.header?.i);
    const checked = (async () => {
      const hash = fromHex(m.header?.h, 'a block hash');
      if (!Number.isInteger(i) || i < 0 || i * blockSize >= this.sizeBytes) throw unexpected(m, 'a block inside the disk', this.where);
      if (await this.blocks.has(hash)) return;
      const where = { ...this.where, offset: i * blockSize, host: this.opts.address };
      await this.opts.verifier.verify(asBuffer(m.body), hash, Math.min(blockSize, this.sizeBytes - i * blockSize), where);
    })();
    checked.catch(() => undefined);
    return checked;
  }

  private async answer(m: WireMessage): Promise<void> {
    try {
      const hashes = (m.header?.hashes as string[] | undefined) ?? [];
      const have = await Promise.all(hashes.map((h) => this.blocks.has(fromHex(h, 'a queried hash'))));
      await this.conn.send({ type: 'known!', header: { q: m.header?.q, have } });
    } catch {
      // the connection broke: the reader reports it
    }
  }
}

function asBuffer(b: Uint8Array | undefined): Buffer {
  if (!b) return Buffer.alloc(0);
  return Buffer.isBuffer(b) ? b : Buffer.from(b.buffer, b.byteOffset, b.byteLength);
}

/** The header of a message whose type has a check in the protocol, or PIPE_PROTOCOL naming the field. */
function checkedHeader(m: WireMessage, where: ErrorLocation): Record<string, unknown> {
  const bad = pipeMessageProblem(m, where);
  if (bad) throw bad;
  return m.header ?? {};
}
