import type { DependencyContainer } from 'tsyringe';
import type { BlockFilter } from '../../contracts/block-filter.js';
import type { SourceDisk } from '../../contracts/source-host.js';
import type { DiskHandle, Transport } from '../../contracts/transport.js';
import { FerryError, pluginError, type ErrorLocation } from '../../errors.js';
import type { JobContext } from '../../job/job-context.js';
import type { BlockCodec } from '../../repository/block-codec.js';
import { recordBlocks, type BlockRecord } from '../../pipe/block-record.js';
import { guardHandle } from '../../pipe/guarded-handle.js';
import { SourceMover, type ChangedRanges, type SourceCounters } from '../../pipe/source-mover.js';
import type { PluginHost } from '../../plugins/plugin-host.js';
import { newStageMeters, type StageMeters } from '../../pipe/stage-meter.js';
import { chooseMode, chooseTransport, skipContext, skipExtents } from '../../plan/disk-plan.js';
import { Tokens } from '../../tokens.js';
import { SUPPORTED_VERSIONS, type Connection, type WireMessage } from '../wire/index.js';
import { errorToWire, hex, pipeMessageProblem, readTaskProblem, unexpected, type PluginOptions, type ReadTask, type TaskInfo, type TaskSummary } from './protocol.js';
import { proxyPluginOptions } from './proxy-options.js';
import { Slots } from './slots.js';

/** How long a finished or broken task's figures are kept for a resume. */
const TASK_TTL_MS = 10 * 60_000;
/**
 * Records without data sent as one `run` message, at most (a longer run of the source mover is sent
 * as several). Every version of the pipe protocol has `run` messages; a repository service before
 * runs reached its target mover turns one into a record per block, so keeping this bound keeps
 * what such a peer holds at once what it always was.
 */
const MAX_RUN = 4096;
/** Hashes asked in one `known?` message, at most. */
const MAX_QUERY = 64;

export interface ProxyServiceOptions {
  plugins: PluginHost;
  /** The block codec (worker threads) for a block-id key: none for plain SHA-256 ids. */
  codec: (idKey?: Buffer) => BlockCodec;
  /** Disks read at the same time (`taskSlots`); further tasks wait for a slot. */
  taskSlots: number;
  log?: (line: string) => void;
}

/** Figures of one task, kept across the connections that serve it (resumes). */
interface TaskState {
  counters: SourceCounters;
  meters: StageMeters;
  /** Highest record index sent on any connection so far (-1: none). */
  highestSent: number;
  resentBlocks: number;
  expires: number;
}

/**
 * The source-side data mover as a service (`ferry proxy serve`): a repository service connects,
 * sends a read task, and the proxy reads the disk through its own transports, filters and worker
 * threads with the same `SourceMover` an embedded session uses, asks which hashes the repository
 * already holds, and sends the records in index order within the in-flight window.
 */
export class ProxyService {
  readonly slots: Slots;
  private readonly tasks = new Map<string, TaskState>();
  private readonly open = new Set<Connection>();

  constructor(private readonly opts: ProxyServiceOptions) {
    this.slots = new Slots(opts.taskSlots);
  }

  /** Serves one data-pipe connection until the peer closes it. */
  async serve(conn: Connection): Promise<void> {
    this.open.add(conn);
    try {
      // One task per connection: the repository service opens a data pipe per disk (and per resume).
      const m = await conn.receive();
      if (!m) return;
      if (m.type !== 'task') throw unexpected(m, 'a read task');
      await this.runTask(conn, m.header as unknown as ReadTask);
    } catch (err) {
      this.opts.log?.(`data pipe from ${conn.peer.name} (${conn.peer.address}): ${(err as Error).message}`);
    } finally {
      this.open.delete(conn);
      await conn.close().catch(() => undefined);
    }
  }

  /** Closes every data pipe (service shutdown). */
  async close(): Promise<void> {
    await Promise.all([...this.open].map((c) => c.close('the proxy is shutting down').catch(() => undefined)));
  }

  private async runTask(conn: Connection, task: ReadTask): Promise<void> {
    const where: ErrorLocation = { vm: String(task?.vm), disk: String(task?.disk?.name) };
    if (!SUPPORTED_VERSIONS.includes(task?.version)) {
      await conn.send({ type: 'error', header: { error: errorToWire(new FerryError('PIPE_VERSION', `read task version ${task?.version}; this proxy speaks ${SUPPORTED_VERSIONS.join(', ')}`, where)) } });
      return;
    }
    const problem = readTaskProblem(task);
    if (problem) {
      await conn.send({ type: 'error', header: { error: errorToWire(new FerryError('PIPE_PROTOCOL', `refused read task from ${conn.peer.name}: ${problem}`, where)) } });
      return;
    }
    const state = this.taskState(task.taskId);
    const release = await this.slots.acquire();
    const container = this.opts.plugins.container.createChildContainer();
    const ctx: JobContext = { name: task.vm, file: '', dir: '', where: () => ({}) };
    container.register(Tokens.JobContext, { useValue: ctx });
    let handle: DiskHandle | undefined;
    const pipe = new PipeReader(conn);
    try {
      const opened = await this.openDisk(container, task, where);
      handle = opened.handle;
      const filters = await this.filters(container, task, where);
      const swapNotes: string[] = [];
      const skip = await skipExtents(filters, task.disk, where, skipContext(handle, swapNotes));
      const { info, changed } = this.plan(task, handle, opened);
      await conn.send({ type: 'task.ok', header: { ...info } });
      const mover = new SourceMover(
        {
          blockSize: task.blockSize,
          compressor: task.compressor,
          codec: this.opts.codec(task.idKey ? Buffer.from(task.idKey, 'hex') : undefined),
          filters,
          readAhead: task.readAhead,
          isKnown: (hash) => pipe.isKnown(hash, state.meters.network),
          // `send` copies a block into its frame before it returns, and a resume reads the disk
          // again: the records need no copies of their own.
          lendBuffers: true,
          // `send` cuts runs into `run` messages of at most MAX_RUN blocks
          runs: true,
        },
        state.meters,
      );
      await this.send(conn, pipe, task, state, mover.blocks(handle, skip, state.counters, changed, task.resumeFrom));
      const summary: TaskSummary = {
        bytesRead: state.counters.bytesRead,
        zeroBytesSkipped: state.counters.zeroBytesSkipped,
        bytesTransferred: state.counters.bytesTransferred,
        resentBlocks: state.resentBlocks,
        ...(state.counters.filtered && { filtered: { ...state.counters.filtered } }),
        swapBytesSkipped: state.counters.skippedBytes ?? 0,
        ...(swapNotes.length && { swapNotes }),
        busy: {
          'source read': Math.round(state.meters['source read'].busyMs),
          processing: Math.round(state.meters.processing.busyMs),
          network: Math.round(state.meters.network.busyMs),
        },
      };
      await conn.send({ type: 'end', header: { ...summary } });
      const done = await pipe.next();
      if (done?.type === 'done') this.tasks.delete(task.taskId);
    } catch (err) {
      // A dropped pipe is the repository side's to resume; a malformed message is answered.
      const failed = pipe.broken ?? err;
      if (pipe.broken && !(failed instanceof FerryError && failed.code === 'PIPE_PROTOCOL')) throw failed;
      // A read or plugin failure: the repository side fails the disk (a resume would not help).
      await conn.send({ type: 'error', header: { error: errorToWire(failed instanceof FerryError ? failed.at(where) : failed) } }).catch(() => undefined);
    } finally {
      pipe.stop();
      await handle?.close().catch(() => undefined);
      release();
      await container.dispose();
    }
  }

  /** Sends the records; data blocks wait while `window` of them are unacknowledged. */
  private async send(conn: Connection, pipe: PipeReader, task: ReadTask, state: TaskState, records: AsyncIterable<BlockRecord>): Promise<void> {
    const net = state.meters.network;
    let run: { i: number; n: number; k: 'zero' | 'unchanged'; read: boolean } | undefined;
    const flush = async (): Promise<void> => {
      if (!run) return;
      const r = run;
      run = undefined;
      await net.time(() => conn.send({ type: 'run', header: { ...r } }));
    };
    for await (const rec of records) {
      pipe.check();
      if (rec.kind === 'zero' || rec.kind === 'unchanged') {
        const read = rec.kind === 'zero' && rec.read;
        for (let i = rec.index, left = recordBlocks(rec); left > 0; ) {
          if (!run || run.k !== rec.kind || run.read !== read || run.i + run.n !== i || run.n >= MAX_RUN) {
            await flush();
            run = { i, n: 0, k: rec.kind, read };
          }
          const take = Math.min(left, MAX_RUN - run.n);
          run.n += take;
          i += take;
          left -= take;
        }
        continue;
      }
      await flush();
      if (rec.kind === 'known') {
        await net.time(() => conn.send({ type: 'known', header: { i: rec.index, h: hex(rec.hash) } }));
        continue;
      }
      await pipe.windowOpen(task.window);
      if (rec.index <= state.highestSent) state.resentBlocks++;
      state.highestSent = Math.max(state.highestSent, rec.index);
      pipe.sent(rec.index);
      await net.time(() => conn.send({ type: 'block', header: { i: rec.index, h: hex(rec.hash) }, body: rec.encoded }));
    }
    await flush();
  }

  private taskState(id: string): TaskState {
    const now = Date.now();
    for (const [k, t] of this.tasks) if (t.expires < now) this.tasks.delete(k);
    let t = this.tasks.get(id);
    if (!t) {
      t = { counters: { bytesRead: 0, zeroBytesSkipped: 0, bytesTransferred: 0 }, meters: newStageMeters(), highestSent: -1, resentBlocks: 0, expires: 0 };
      this.tasks.set(id, t);
    }
    t.expires = now + TASK_TTL_MS;
    return t;
  }

  /** Stage 3 of the disk plan: what needs the open disk (its size, the transport's change list). */
  private plan(task: ReadTask, handle: DiskHandle, opened: { name: string; reason: string }): { info: TaskInfo; changed?: ChangedRanges } {
    const info: TaskInfo = { sizeBytes: handle.size, transport: opened.name, transportReason: opened.reason, mode: 'full', modeReason: '' };
    // No candidate: the server or the repository service decided on a full run and fills in why.
    if (!task.incremental) return { info };
    const decided = chooseMode(task.incremental, handle);
    return { info: { ...info, mode: decided.mode, modeReason: decided.reason }, ...(decided.mode === 'incremental' && { changed: decided.changed }) };
  }

  private async openDisk(container: DependencyContainer, task: ReadTask, where: ErrorLocation): Promise<{ handle: DiskHandle; name: string; reason: string }> {
    const plugins = this.opts.plugins;
    const chosen = await chooseTransport(
      task.transport,
      task.disk,
      {
        available: () => plugins.available('transport').map((t) => t.name),
        // The job's options reach only the transport it names; `auto` tries others without options.
        create: async (name) => plugins.create('transport', name, container, name === task.transport ? await this.options('transport', name, task.transportOptions, 'transport', where) : {}, where),
        providerOf: (name) => plugins.providerOf('transport', name),
        reader: 'this proxy',
      },
      where,
    );
    const handle = await openGuarded(chosen.transport, task.disk, plugins.providerOf('transport', chosen.name), where);
    return { handle, name: chosen.name, reason: chosen.reason };
  }

  private async filters(container: DependencyContainer, task: ReadTask, where: ErrorLocation): Promise<{ name: string; impl: BlockFilter }[]> {
    // per item: one filter listed twice with different options is two instances
    return Promise.all(
      task.filters.map(async (name, i) => {
        const config = await this.options('block-filter', name, task.filterOptions?.[i], `filters[${i}]`, where);
        return { name, impl: await this.opts.plugins.create('block-filter', name, container, config, where) };
      }),
    );
  }

  /** The task's options for `kind` `name`, checked against the configSchema of this proxy's plugin. */
  private async options(kind: 'transport' | 'block-filter', name: string, given: PluginOptions | undefined, at: string, where: ErrorLocation): Promise<PluginOptions> {
    const reg = await this.opts.plugins.registration(kind, name, where);
    return proxyPluginOptions(reg.options.configSchema, given, { path: at, what: `${kind} "${name}"`, plugin: reg.plugin }, where);
  }
}

/**
 * Reads what the repository side sends while the proxy sends records: answers to `known?`, acks.
 * A broken connection is remembered and stops the sender at its next block.
 */
class PipeReader {
  broken?: Error;
  private acked = 0;
  private readonly inFlight: number[] = [];
  private ackWaiter?: () => void;
  private readonly queries = new Map<number, { resolve: (have: boolean[]) => void; reject: (e: Error) => void }>();
  private batch: { hash: Buffer; resolve: (b: boolean) => void; reject: (e: Error) => void }[] = [];
  private nextQuery = 1;
  private final?: (m: WireMessage | undefined) => void;
  private stopped = false;
  private readonly loop: Promise<void>;

  constructor(private readonly conn: Connection) {
    this.loop = this.read();
  }

  /** Source-side dedup: hashes are asked in batches (one message per turn of the event loop). */
  isKnown(hash: Buffer, net: { start(): void; end(): void }): Promise<boolean> {
    this.check();
    return new Promise<boolean>((resolve, reject) => {
      if (this.batch.length === 0) setImmediate(() => this.flushQueries(net));
      this.batch.push({ hash, resolve, reject });
      if (this.batch.length >= MAX_QUERY) this.flushQueries(net);
    });
  }

  sent(index: number): void {
    this.inFlight.push(index);
  }

  async windowOpen(window: number): Promise<void> {
    while (this.inFlight.filter((i) => i >= this.acked).length >= Math.max(1, window)) {
      this.check();
      await new Promise<void>((r) => (this.ackWaiter = r));
    }
    this.check();
  }

  check(): void {
    if (this.broken) throw this.broken;
  }

  /** The next message that is neither an answer nor an ack (`done` after `end`). */
  next(): Promise<WireMessage | undefined> {
    return new Promise((r) => (this.final = r));
  }

  stop(): void {
    this.stopped = true;
    this.final?.(undefined);
  }

  private flushQueries(net: { start(): void; end(): void }): void {
    const batch = this.batch;
    this.batch = [];
    if (batch.length === 0) return;
    const q = this.nextQuery++;
    net.start();
    const settle = (): void => net.end();
    this.queries.set(q, {
      resolve: (have) => {
        settle();
        batch.forEach((b, i) => b.resolve(have[i] === true));
      },
      reject: (e) => {
        settle();
        batch.forEach((b) => b.reject(e));
      },
    });
    this.conn.send({ type: 'known?', header: { q, hashes: batch.map((b) => hex(b.hash)) } }).catch((err) => this.breakWith(err as Error));
  }

  private async read(): Promise<void> {
    try {
      while (!this.stopped) {
        const m = await this.conn.receive();
        if (!m) throw new FerryError('PIPE_CLOSED', 'the repository service closed the data pipe');
        const bad = pipeMessageProblem(m);
        if (bad) throw bad;
        if (m.type === 'known!') {
          const h = m.header as { q: number; have: boolean[] };
          const q = this.queries.get(h.q);
          this.queries.delete(h.q);
          q?.resolve(h.have);
        } else if (m.type === 'ack') {
          this.acked = Math.max(this.acked, (m.header as { upTo: number }).upTo);
          while (this.inFlight.length && this.inFlight[0] < this.acked) this.inFlight.shift();
          this.wake();
        } else {
          const f = this.final;
          this.final = undefined;
          f?.(m);
          return;
        }
      }
    } catch (err) {
      this.breakWith(err as Error);
    }
  }

  private breakWith(err: Error): void {
    this.broken ??= err;
    for (const q of this.queries.values()) q.reject(this.broken);
    this.queries.clear();
    for (const b of this.batch) b.reject(this.broken);
    this.batch = [];
    this.wake();
    this.final?.(undefined);
  }

  private wake(): void {
    const w = this.ackWaiter;
    this.ackWaiter = undefined;
    w?.();
  }
}

async function openGuarded(transport: Transport, disk: SourceDisk, plugin: string, where: ErrorLocation): Promise<DiskHandle> {
  const h = await transport.open(disk).catch((err) => Promise.reject(pluginError(err, plugin, 'open', where)));
  return guardHandle(h, plugin, where);
}
