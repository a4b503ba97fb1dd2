import { randomBytes } from 'node:crypto';
import { FerryError, type ErrorLocation } from '../../errors.js';
import { prunePoints } from '../../maintenance/prune.js';
import { runVerify } from '../../maintenance/verify.js';
import type { BlockCodec } from '../../repository/block-codec.js';
import { defaultReadAhead } from '../../pipe/source-mover.js';
import { TargetMover, type TargetCounters } from '../../pipe/target-mover.js';
import type { BlockMap } from '../../repository/block-map.js';
import type { WriteMeter } from '../../repository/block-store.js';
import { Repository, type RestorePointDisk } from '../../repository/repository.js';
import { lockForReading, RepositoryLock } from '../../repository/repository-lock.js';
import type { VerifyOutcome } from '../../report/session-report.js';
import { BusyMeter } from '../../pipe/stage-meter.js';
import { fullRead, incrementalCandidate, readBase } from '../../plan/disk-plan.js';
import { PIPE_VERSION, type Connection, type PeerAuth, type WireMessage } from '../wire/index.js';
import {
  controlRequestProblem,
  errorToWire,
  hex,
  stagesFromBusy,
  type ControlReply,
  type ControlRequest,
  type ControlVerb,
  type DiskOrder,
  type DiskOutcome,
  type ReadTask,
  type RestoreRequest,
} from './protocol.js';

/** A checked control request: its verb's header with `id` and `op`. */
type ControlHeader = { [V in ControlVerb]: ControlRequest<V> & { op: V; id: number } }[ControlVerb];
import { BlockVerifier } from './block-verifier.js';
import { ProxyPipe, type Dial } from './proxy-pipe.js';

export interface RepositoryServiceOptions {
  /** A new `Repository` over the service's backend (one per control connection). */
  openRepository(opts: { create: boolean; writeMeter?: WriteMeter }): Promise<Repository>;
  /**
   * Block codec (keyed with an encrypted repository's id key) for checking the blocks proxies send
   * and for the health check after a session. It needs every compressor the proxies use.
   */
  codec: (idKey?: Buffer) => BlockCodec;
  /** How this service authenticates to proxies (role `repository`). */
  auth: PeerAuth;
  /** How long a dropped data pipe may take to come back (default 30 s). */
  retryWindowMs?: number;
  /** Data blocks sent and not yet kept, per disk (default 32). */
  window?: number;
  heartbeatMs?: number;
  log?: (line: string) => void;
  /** Opens data pipes to proxies (default: the wire layer's `connect`). */
  dial?: Dial;
}

const DEFAULT_WINDOW = 32;
/** Restores whose progress is remembered for a resumed stream (the oldest is forgotten first). */
const REMEMBERED_RESTORES = 256;

/**
 * How far each restore's stream got, by the client's restore id, across its connections: a resumed
 * stream counts the blocks it sends again (the client's `resentBlocks`).
 */
class RestoreLedger {
  private readonly sentUpTo = new Map<string, number>();

  get(id: string | undefined): number {
    return (id && this.sentUpTo.get(id)) || 0;
  }

  sent(id: string | undefined, upTo: number): void {
    if (!id) return;
    if (!this.sentUpTo.has(id) && this.sentUpTo.size >= REMEMBERED_RESTORES) this.sentUpTo.delete(this.sentUpTo.keys().next().value!);
    this.sentUpTo.set(id, Math.max(upTo, this.get(id)));
  }

  forget(id: string | undefined): void {
    if (id) this.sentUpTo.delete(id);
  }
}

/**
 * The target-side data mover as a service (`ferry repository serve`). A backup server opens a
 * control connection, takes the session's lock through it, and hands over one disk at a time: the
 * service connects to the disk's proxy, receives the blocks with the same `TargetMover` an embedded
 * session uses, keeps the block map, and commits the restore point when the server says so. A
 * control connection that ends without `session.end` leaves nothing committed and frees the lock.
 */
export class RepositoryService {
  private readonly open = new Set<ControlSession>();
  private readonly restores = new RestoreLedger();

  constructor(readonly opts: RepositoryServiceOptions) {}

  async serve(conn: Connection): Promise<void> {
    const s = new ControlSession(this.opts, conn, this.restores);
    this.open.add(s);
    try {
      await s.run();
    } finally {
      this.open.delete(s);
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.open].map((s) => s.stop('the repository service is shutting down')));
  }
}

interface KeptDisk {
  map: BlockMap;
  vm: string;
}

class ControlSession {
  private repo?: Promise<Repository>;
  private lock?: RepositoryLock;
  private readonly kept = new Map<string, KeptDisk>();
  private readonly abort = new AbortController();
  private readonly writeMeter = new BusyMeter();
  private readonly running = new Set<Promise<void>>();
  private job = '';
  /** Set by `session.abort`: no commit after it. */
  private aborted = false;
  /** Running restores: a client's ack (blocks written) by request id. */
  private readonly restoreAcks = new Map<number, (done: number) => void>();
  /** `point.open`: read locks held until the connection ends. */
  private readonly readLocks: RepositoryLock[] = [];

  constructor(
    private readonly opts: RepositoryServiceOptions,
    private readonly conn: Connection,
    private readonly restores: RestoreLedger,
  ) {}

  async run(): Promise<void> {
    try {
      for (;;) {
        const m = await this.conn.receive();
        if (!m) break;
        if (m.type === 'restore.ack') {
          this.restoreAcks.get(Number(m.header?.id))?.(Number(m.header?.done) || 0);
          continue;
        }
        if (m.type !== 'req') continue;
        const p = this.answer(m).finally(() => this.running.delete(p));
        this.running.add(p);
      }
    } catch (err) {
      this.opts.log?.(`control connection from ${this.conn.peer.name} (${this.conn.peer.address}): ${(err as Error).message}`);
    } finally {
      await this.stop('the control connection ended');
    }
  }

  /** Ends the session: running disks stop, kept maps are dropped (never committed), the lock goes. */
  async stop(reason: string): Promise<void> {
    this.abort.abort(new Error(reason));
    await this.conn.close(reason).catch(() => undefined);
    await Promise.allSettled([...this.running]);
    this.kept.clear();
    await this.lock?.release().catch(() => undefined);
    this.lock = undefined;
    await Promise.all(this.readLocks.splice(0).map((l) => l.release().catch(() => undefined)));
  }

  private async answer(m: WireMessage): Promise<void> {
    const h = (m.header ?? {}) as Record<string, unknown>;
    const id = h.id;
    try {
      // Checked before the switch: past this line every header has its verb's type.
      const bad = controlRequestProblem(m.header);
      if (bad) throw bad;
      const result = await this.dispatch(h as unknown as ControlHeader);
      await this.conn.send({ type: 'res', header: { id, ok: true, result } });
    } catch (err) {
      await this.conn.send({ type: 'res', header: { id, ok: false, error: errorToWire(err) } }).catch(() => undefined);
    }
  }

  private dispatch(h: ControlHeader): Promise<unknown> {
    switch (h.op) {
      case 'session.open':
        return this.openSession(h);
      case 'points.list':
        return this.repository(false).then((r) => r.listPointsChecked(h.vm));
      case 'disk.receive':
        return this.receiveDisk(h.order, h.id);
      case 'point.commit':
        return this.commit(h);
      case 'session.abort':
        // The backup server was interrupted: running disks stop, nothing more is committed.
        this.aborted = true;
        this.abort.abort(new Error('the backup server was interrupted'));
        return Promise.resolve({});
      case 'point.discard':
        for (const d of h.diskIds) this.kept.delete(d);
        return Promise.resolve({});
      case 'session.end':
        return this.endSession(h);
      case 'restore.open':
        return this.restore(h, h.id);
      case 'point.open':
        return this.openPoint(h);
      case 'point.map':
        return this.pointMap(h, h.id);
      case 'blocks.read':
        return this.readBlocks(h, h.id);
    }
  }

  /**
   * Random access to a point (`ferry serve` against this service): a `restore` lock, held until the
   * connection ends, keeps garbage collection from deleting what the client may still read.
   */
  private async openPoint(h: ControlRequest<'point.open'>): Promise<ControlReply<'point.open'>> {
    const repo = await this.repository(false);
    const lock = await lockForReading(repo.backend, { operation: 'restore', vms: [h.vm] });
    if (lock) this.readLocks.push(lock);
    const point = await repo.getPoint(h.vm, h.point);
    await repo.blocks.load();
    return { point, ...(repo.idKey && { idKey: hex(repo.idKey) }) };
  }

  private async pointMap(h: ControlRequest<'point.map'>, id: number): Promise<ControlReply<'point.map'>> {
    const repo = await this.repository(false);
    const { point, disk } = await repo.getPointDisk(h.vm, h.point, h.disk);
    const map = await repo.readMap(disk);
    await this.conn.send({ type: 'restore.map', header: { id, point: point.id }, body: map.encode() });
    return { blocks: map.blockCount };
  }

  /** Stored block objects by id, as stored: the client checks and decodes them against its map. */
  private async readBlocks(h: ControlRequest<'blocks.read'>, id: number): Promise<ControlReply<'blocks.read'>> {
    if (this.readLocks.length === 0 && !this.lock) throw new FerryError('PIPE_PROTOCOL', 'blocks.read before point.open');
    const repo = await this.repository(false);
    for (const h0 of h.hashes) {
      const { record } = await repo.blocks.readRecord(Buffer.from(h0, 'hex'));
      await this.conn.send({ type: 'restore.block', header: { id, h: h0 }, body: record });
    }
    return { blocks: h.hashes.length };
  }

  private repository(create: boolean): Promise<Repository> {
    this.repo ??= this.opts.openRepository({ create, writeMeter: this.writeMeter });
    return this.repo;
  }

  private async openSession(h: ControlRequest<'session.open'>): Promise<ControlReply<'session.open'>> {
    if (this.lock) throw new FerryError('PIPE_PROTOCOL', 'a session is already open on this connection');
    const repo = await this.repository(true);
    this.job = h.job;
    this.lock = await RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: h.vms, job: h.job, session: h.session });
    return { location: repo.backend.location };
  }

  private async receiveDisk(order: DiskOrder, reqId: number): Promise<DiskOutcome> {
    if (!this.lock) throw new FerryError('PIPE_PROTOCOL', 'disk.receive before session.open');
    const where: ErrorLocation = { vm: order.vm, disk: order.disk.name };
    const repo = await this.repository(true);
    await repo.blocks.load();
    const healedBefore = repo.blocks.healed;
    const { incremental, base, fullReason } = await this.incremental(repo, order);
    const task: Omit<ReadTask, 'resumeFrom'> = {
      version: PIPE_VERSION,
      taskId: `${order.session}/${order.vm}/${order.disk.name}/${randomBytes(4).toString('hex')}`,
      vm: order.vm,
      disk: order.disk,
      transport: order.transport,
      ...(order.transportOptions && { transportOptions: order.transportOptions }),
      filters: order.filters,
      ...(order.filterOptions && { filterOptions: order.filterOptions }),
      compressor: order.compressor,
      blockSize: order.blockSize,
      readAhead: defaultReadAhead(order.blockSize),
      window: this.opts.window ?? DEFAULT_WINDOW,
      ...(incremental && { incremental }),
      ...(repo.idKey && { idKey: hex(repo.idKey) }),
    };
    let lastEvent = 0;
    const pipe = new ProxyPipe({
      address: order.proxy,
      auth: this.opts.auth,
      task,
      blocks: repo.blocks,
      verifier: new BlockVerifier(this.opts.codec(repo.idKey), order.blockSize),
      retryWindowMs: this.opts.retryWindowMs ?? 30_000,
      heartbeatMs: this.opts.heartbeatMs,
      dial: this.opts.dial,
      signal: this.abort.signal,
      onProgress: (doneBytes) => {
        const now = performance.now();
        if (now - lastEvent < 250) return;
        lastEvent = now;
        void this.conn.send({ type: 'event', header: { id: reqId, doneBytes } }).catch(() => undefined);
      },
    });
    const t0 = performance.now();
    const info = await pipe.start();
    if (info.mode === 'full' && !info.modeReason) info.modeReason = fullRead(fullReason);
    const counters: TargetCounters = { bytesWritten: 0, blocksNew: 0, blocksDeduped: 0, blocksZero: 0, blocksUnchanged: 0 };
    const header = { vm: order.vm, disk: order.disk.name, sizeBytes: info.sizeBytes, blockSize: order.blockSize };
    let map: BlockMap;
    try {
      // The pipe checked every new block before the mover sees it (BlockVerifier: the block
      // object's CRC-32 and raw length, and its id, on the worker threads); the mover's own CRC-32
      // check on this thread would repeat the first two. A block the repository held already was
      // not checked, and is not stored either.
      map = await new TargetMover(repo, { trustedSource: true }).receiveDisk(header, pipe.records(), counters, info.mode === 'incremental' ? base : undefined);
    } catch (err) {
      throw err instanceof FerryError ? err.at(where) : err;
    }
    if (this.abort.signal.aborted) throw new FerryError('SESSION_INTERRUPTED', 'the backup server ended the session', where);
    const diskId = randomBytes(8).toString('hex');
    this.kept.set(diskId, { map, vm: order.vm });
    const summary = pipe.summary!;
    const stages = stagesFromBusy({ ...summary.busy, 'target write': pipe.targetBusy.busyMs }, performance.now() - t0);
    return {
      diskId,
      info,
      summary,
      target: { ...counters, healed: repo.blocks.healed - healedBefore },
      blocks: map.blockCount,
      reconnects: pipe.reconnects,
      ...stages,
    };
  }

  /** Stage 2 of the disk plan: the base map and the blocks to heal, when the server found a base. */
  private async incremental(
    repo: Repository,
    order: DiskOrder,
  ): Promise<{ incremental?: ReadTask['incremental']; base?: BlockMap; fullReason: string }> {
    if (!order.base) return { fullReason: order.fullReason ?? 'no earlier restore point of this disk by this job' };
    const read = await readBase(repo, order.base);
    if ('fullReason' in read) return read;
    return { base: read.map, fullReason: '', incremental: incrementalCandidate(order.base, read.heal) };
  }

  private async commit(h: ControlRequest<'point.commit'>): Promise<ControlReply<'point.commit'>> {
    if (!this.lock) throw new FerryError('PIPE_PROTOCOL', 'point.commit before session.open');
    if (this.aborted) throw new FerryError('SESSION_INTERRUPTED', 'the backup server interrupted the session; nothing more is committed', { vm: h.vm });
    const maps: BlockMap[] = [];
    const disks: Omit<RestorePointDisk, 'map' | 'mapSha256'>[] = [];
    for (const d of h.disks) {
      const kept = this.kept.get(d.diskId);
      if (!kept || kept.vm !== h.vm) throw new FerryError('PIPE_PROTOCOL', `no received disk ${d.name} (${d.diskId}) of vm ${h.vm} to commit`, { vm: h.vm, disk: d.name });
      maps.push(kept.map);
      disks.push({
        name: d.name,
        sizeBytes: kept.map.diskSize,
        blockSize: kept.map.blockSize,
        blocks: kept.map.blockCount,
        zeroBlocks: d.zeroBlocks,
        ...(d.filtered && { filtered: d.filtered }),
        transport: d.transport,
        mode: d.mode,
        ...(d.changeTracking && { changeTracking: d.changeTracking }),
      });
    }
    await this.lock.assertHeld();
    const repo = await this.repository(true);
    const point = await repo.commitPoint({ ...h.point, vm: h.vm, job: this.job, disks: disks as RestorePointDisk[] }, maps);
    for (const d of h.disks) this.kept.delete(d.diskId);
    return { point };
  }

  private async endSession(h: ControlRequest<'session.end'>): Promise<ControlReply<'session.end'>> {
    const out: ControlReply<'session.end'> = {};
    const repo = await this.repository(true);
    if (h.retention && this.lock) {
      try {
        await this.lock.assertHeld();
        out.retention = { removed: (await prunePoints(repo, { job: this.job, vms: h.vms, policy: h.retention })).removed };
      } catch (err) {
        out.retention = { removed: [], error: errorToWire(err) };
      }
    }
    await this.lock?.release();
    this.lock = undefined;
    this.kept.clear();
    if (h.verify) out.verify = await this.verify(repo, h.verify.samplePercent, h.points ?? []);
    return out;
  }

  private async verify(repo: Repository, samplePercent: number, points: { vm: string; id: string }[]): Promise<VerifyOutcome> {
    if (points.length === 0) return { status: 'not run', samplePercent, blocksChecked: 0, damagedBlocks: 0, throughputMiBps: 0 };
    try {
      const v = await runVerify(repo, this.opts.codec(repo.idKey), { points, samplePercent });
      return {
        status: v.status,
        samplePercent,
        blocksChecked: v.blocks.checked,
        damagedBlocks: v.damagedBlocks.length,
        throughputMiBps: v.throughputMiBps,
        ...(v.error && { error: v.error }),
      };
    } catch (err) {
      return { status: 'not run', samplePercent, blocksChecked: 0, damagedBlocks: 0, throughputMiBps: 0, error: errorToWire(err) };
    }
  }

  /**
   * Streams one disk of a restore point: the block map, then every non-zero block from `from` on as
   * stored (the client checks CRC-32 and SHA-256 against the map, so the check covers the network
   * too). A client resuming after a drop asks again with the first block it has not written; the
   * map's header then says how many blocks of the earlier streams this one sends again (`resent`).
   */
  private async restore(h: RestoreRequest, id: number): Promise<{ blocks: number }> {
    const repo = await this.repository(false);
    const lock = await lockForReading(repo.backend, { operation: 'restore', vms: [h.vm] });
    let unlisten = (): void => undefined;
    try {
      const { point, disk } = await repo.getPointDisk(h.vm, h.point, h.disk);
      const map = await repo.readMap(disk);
      const from = h.from ?? 0;
      if (!Number.isInteger(from) || from < 0 || from > map.blockCount) {
        throw new FerryError('PIPE_PROTOCOL', `a restore from block ${String(from)} of a disk of ${map.blockCount} blocks`, { vm: h.vm, disk: h.disk });
      }
      const restoreId = typeof h.restoreId === 'string' && /^[0-9a-f]{8,64}$/.test(h.restoreId) ? h.restoreId : undefined;
      let resent = 0;
      for (let i = from, end = Math.min(this.restores.get(restoreId), map.blockCount); i < end; i++) if (map.get(i)) resent++;
      await repo.blocks.load();
      const idKey = repo.idKey;
      const header = { id, point: point.id, sizeBytes: map.diskSize, blockSize: map.blockSize, from, resent, ...(idKey && { idKey: hex(idKey) }) };
      await this.conn.send({ type: 'restore.map', header, body: map.encode() });
      let sent = 0;
      let acked = 0;
      let wake: (() => void) | undefined;
      this.restoreAcks.set(id, (done) => {
        acked = Math.max(acked, done);
        wake?.();
      });
      const window = this.opts.window ?? DEFAULT_WINDOW;
      const onAbort = (): void => wake?.();
      this.abort.signal.addEventListener('abort', onAbort, { once: true });
      unlisten = () => this.abort.signal.removeEventListener('abort', onAbort);
      for (let i = from; i < map.blockCount; i++) {
        const hash = map.get(i);
        if (!hash) continue;
        while (sent - acked >= window && !this.abort.signal.aborted) {
          await new Promise<void>((r) => (wake = r));
        }
        if (this.abort.signal.aborted) throw new FerryError('PIPE_CLOSED', 'the client went away during the restore', { vm: h.vm, disk: h.disk });
        const { record } = await repo.blocks.readRecord(hash).catch((err) => {
          throw err instanceof FerryError ? err.at({ vm: h.vm, disk: h.disk, offset: i * map.blockSize }) : err;
        });
        await this.conn.send({ type: 'restore.block', header: { id, i, h: hex(hash) }, body: record });
        this.restores.sent(restoreId, i + 1);
        sent++;
      }
      this.restores.forget(restoreId);
      return { blocks: sent };
    } finally {
      this.restoreAcks.delete(id);
      unlisten();
      await lock?.release();
    }
  }
}
