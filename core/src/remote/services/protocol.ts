import type { Extent } from '../../contracts/extent.js';
import type { ChangeTracking, SourceDisk } from '../../contracts/source-host.js';
import { FerryError, type ErrorCode, type ErrorLocation, type ReportedError } from '../../errors.js';
import { MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../../job/job-schema.js';
import { STAGES, type Stage, type StageReport } from '../../pipe/stage-meter.js';
import type { Connection, WireMessage } from '../wire/index.js';

/**
 * The messages the data-mover services exchange over the wire layer's framed connections
 * (`docs/architecture.md`, "Data-mover services"). Two conversations:
 *
 * Control (backup server → repository service; request `req` / answer `res` matched by `id`):
 *   session.open {job, session, vms} → {location}: opens the repository, takes the session's lock
 *   points.list {vm?} → {points}
 *   disk.receive {DiskOrder} → DiskOutcome; meanwhile `event` {id, doneBytes, sizeBytes}
 *   point.commit {vm, point, disks: [{diskId, ...}]} → {point}; point.discard {diskIds}
 *   session.end {retention?, verify?} → {retention?, verify?}: releases the lock
 *   session.abort → {}: (Ctrl-C on the server) running disks stop, no commit is accepted after it
 *   restore.open {vm, disk, point, restoreId?, from?} → `restore.map` {point, from, resent} (block
 *     map in the body), then `restore.block` {i, h} with the stored block object in the body for every
 *     non-zero block from `from` on, then `res`; the client sends `restore.ack` {id, done} as it
 *     writes. After a drop the client asks again with `from` = its first block not written and the
 *     same `restoreId`; `resent` counts the blocks of earlier streams sent again.
 *
 * Data pipe (repository service → proxy; the repository service connects, DESIGN.md step 3):
 *   R→P `task` ReadTask; P→R `task.ok` TaskInfo, then records in index order:
 *     `block` {i, h} body = block object (new data) · `known` {i, h} (hash only) ·
 *     `run` {i, n, k: zero|unchanged, read}: n consecutive records without data
 *   P→R `known?` {q, hashes}: R answers `known!` {q, have} (dedup before compressing)
 *   R→P `ack` {upTo}: every record below `upTo` is kept; the proxy keeps at most `window` data
 *     blocks unacknowledged (the in-flight window), so a slow repository slows reading
 *   P→R `end` TaskSummary; R→P `done`. P→R `error` {error} when reading fails (not retried).
 *   A dropped pipe: R connects again and sends the same task with `resumeFrom` = the next record it
 *   has not kept; the proxy re-reads from there.
 */

/** What the repository service asks a proxy to read (one disk). */
export interface ReadTask {
  /** `PIPE_VERSION` of the repository service; a proxy refuses another with PIPE_VERSION. */
  version: number;
  /** Stable over reconnects: the proxy keeps counters and busy times per task. */
  taskId: string;
  vm: string;
  disk: SourceDisk;
  transport: string;
  filters: string[];
  compressor: { name: string; level: number };
  blockSize: number;
  /** Blocks read ahead of sending. */
  readAhead: number;
  /** Data blocks sent and not yet acknowledged, at most. */
  window: number;
  /** First record to send (0, or the next one after the last the repository kept). */
  resumeFrom: number;
  /** Present when the run may be incremental; the proxy still checks what needs the open disk. */
  incremental?: IncrementalPlan;
  /** Encrypted repositories: the block-id key (hex; ids are HMAC-SHA256 under it). Sent only inside the authenticated pipe. */
  idKey?: string;
}

/**
 * What a proxy checks before it acts on a read task (an authenticated peer may still send nonsense):
 * the limits bound the memory a task can make the proxy use. Returns the problem, or undefined.
 */
export function readTaskProblem(t: ReadTask): string | undefined {
  const int = (v: unknown, lo: number, hi: number): boolean => Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi;
  if (typeof t !== 'object' || t === null) return 'the read task is not an object';
  if (typeof t.taskId !== 'string' || !t.taskId) return 'taskId must be a string';
  if (typeof t.vm !== 'string' || typeof t.disk?.name !== 'string') return 'vm and disk.name must be strings';
  if (typeof t.transport !== 'string' || !Array.isArray(t.filters) || !t.filters.every((f) => typeof f === 'string')) return 'transport and filters must be names';
  if (typeof t.compressor?.name !== 'string' || typeof t.compressor.level !== 'number') return 'compressor must be { name, level }';
  if (!int(t.blockSize, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE) || (t.blockSize & (t.blockSize - 1)) !== 0) return `blockSize ${t.blockSize} is not a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`;
  if (!int(t.readAhead, 1, 64)) return 'readAhead must be 1..64';
  if (!int(t.window, 1, 1024)) return 'window must be 1..1024';
  if (!int(t.resumeFrom, 0, Number.MAX_SAFE_INTEGER)) return 'resumeFrom must be a block index';
  if (t.idKey !== undefined && (typeof t.idKey !== 'string' || !/^[0-9a-f]{64}$/.test(t.idKey))) return 'idKey must be 32 bytes in hex';
  const inc = t.incremental;
  if (inc !== undefined) {
    const extents = (e: unknown): boolean => Array.isArray(e) && e.every((x) => int(x?.offset, 0, Number.MAX_SAFE_INTEGER) && int(x?.length, 1, Number.MAX_SAFE_INTEGER));
    if (!int(inc.baseSize, 0, Number.MAX_SAFE_INTEGER) || typeof inc.reason !== 'string' || !extents(inc.heal) || (inc.extents !== undefined && !extents(inc.extents))) {
      return 'incremental must be { baseSize, reason, heal: extents, extents? }';
    }
  }
  return undefined;
}

export interface IncrementalPlan {
  /** Size of the disk in the base point: a resized disk is read in full. */
  baseSize: number;
  /** Reason line when the run is incremental. */
  reason: string;
  /** Changed ranges the host knows itself; absent: ask the transport's `changedBlocks`. */
  extents?: Extent[];
  /** Blocks of the base map whose stored copy is damaged: read again (self-heal). */
  heal: Extent[];
}

export interface TaskInfo {
  sizeBytes: number;
  transport: string;
  transportReason: string;
  mode: 'full' | 'incremental';
  modeReason: string;
}

/** Proxy-side figures of a task over all its connections. */
export interface TaskSummary {
  bytesRead: number;
  zeroBytesSkipped: number;
  bytesTransferred: number;
  /** Data blocks sent that had been sent before (resumes). */
  resentBlocks: number;
  /** Busy ms of the proxy's stages. */
  busy: Partial<Record<Stage, number>>;
}

/** One disk the backup server hands to the repository service. */
export interface DiskOrder {
  session: string;
  vm: string;
  disk: SourceDisk;
  /** Proxy address `host:port`. */
  proxy: string;
  transport: string;
  filters: string[];
  compressor: { name: string; level: number };
  blockSize: number;
  /** Candidate base for an incremental run (the server checked what needs no open disk). */
  base?: { point: string; disk: import('../../repository/repository.js').RestorePointDisk; reason: string; extents?: Extent[] };
  /** Why the run is full, when there is no base. */
  fullReason?: string;
}

export interface DiskOutcome {
  /** Names the kept block map until `point.commit` or `point.discard`. */
  diskId: string;
  info: TaskInfo;
  summary: TaskSummary;
  target: { bytesWritten: number; blocksNew: number; blocksDeduped: number; blocksZero: number; blocksUnchanged: number; healed: number };
  blocks: number;
  reconnects: number;
  stages: StageReport[];
  bottleneck: Stage | null;
}

export interface CommitDisk {
  diskId: string;
  name: string;
  zeroBlocks: number;
  transport: string;
  mode: 'full' | 'incremental';
  changeTracking?: ChangeTracking;
}

/** An error as it crosses a connection. */
export function errorToWire(err: unknown): ReportedError {
  if (err instanceof FerryError) return { code: err.code, message: err.detail, where: err.where };
  return { code: 'INTERNAL', message: err instanceof Error ? (err.stack ?? err.message) : String(err), where: {} };
}

export function errorFromWire(e: ReportedError | undefined, where: ErrorLocation = {}): FerryError {
  const code = (e?.code ?? 'INTERNAL') as ErrorCode;
  return new FerryError(code, e?.message ?? 'the peer reported an error without details', { ...where, ...(e?.where ?? {}) });
}

/** A message of an unexpected type or shape: the peer does not speak this protocol. */
export function unexpected(m: WireMessage | undefined, wanted: string, where: ErrorLocation = {}): FerryError {
  return new FerryError(
    'PIPE_PROTOCOL',
    m ? `expected ${wanted}, got a "${m.type}" message` : `expected ${wanted}, but the peer closed the connection`,
    where,
  );
}

/** Receives the next message, turning an orderly close into a PIPE_CLOSED error. */
export async function receiveOrFail(conn: Connection, wanted: string, where: ErrorLocation = {}): Promise<WireMessage> {
  const m = await conn.receive();
  if (!m) throw new FerryError('PIPE_CLOSED', `${conn.peer.address} closed the connection while ${wanted} was due`, where);
  return m;
}

/**
 * Request/answer over one control connection, several requests in flight. Messages that are not
 * answers (`event`, restore streams) go to the handler registered for their request id.
 */
export class ControlChannel {
  private nextId = 1;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; onMessage?: (m: WireMessage) => void }>();
  private failed?: Error;
  private readonly pump: Promise<void>;

  constructor(
    readonly conn: Connection,
    private readonly where: ErrorLocation = {},
  ) {
    this.pump = this.run();
  }

  request<T>(op: string, args: Record<string, unknown> = {}, opts: { body?: Uint8Array; onMessage?: (m: WireMessage) => void } = {}): Promise<T> {
    if (this.failed) return Promise.reject(this.failed);
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject, onMessage: opts.onMessage });
      this.conn.send({ type: 'req', header: { id, op, ...args }, body: opts.body }).catch((err) => this.fail(err as Error));
    });
  }

  async close(): Promise<void> {
    await this.conn.close('done').catch(() => undefined);
    await this.pump;
  }

  private async run(): Promise<void> {
    try {
      for (;;) {
        const m = await this.conn.receive();
        if (!m) throw new FerryError('PIPE_CLOSED', `the repository service at ${this.conn.peer.address} closed the connection`, this.where);
        const id = Number(m.header?.id);
        const w = this.waiting.get(id);
        if (!w) continue;
        if (m.type === 'res') {
          this.waiting.delete(id);
          if (m.header?.ok) w.resolve(m.header.result);
          else w.reject(errorFromWire(m.header?.error as ReportedError, this.where));
        } else {
          w.onMessage?.(m);
        }
      }
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const w of this.waiting.values()) w.reject(this.failed);
    this.waiting.clear();
  }
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b).toString('hex');
}

export function fromHex(s: unknown, what: string): Buffer {
  if (typeof s !== 'string' || !/^[0-9a-f]{64}$/.test(s)) throw new FerryError('PIPE_PROTOCOL', `${what} is not a SHA-256 in hex`);
  return Buffer.from(s, 'hex');
}

/**
 * Stage figures from busy times measured in different processes (the proxy's source read,
 * processing and network; the repository service's target write). Busy times of several disks are
 * added, which overstates a stage when disks ran at the same time (shares are capped at 1).
 */
export function stagesFromBusy(busy: Partial<Record<Stage, number>>, wallMs: number): { stages: StageReport[]; bottleneck: Stage | null } {
  const stages = STAGES.filter((s) => busy[s] !== undefined).map((stage) => {
    const busyMs = Math.round(busy[stage]!);
    return { stage, busyMs, busyShare: wallMs > 0 ? Math.min(1, Math.round((busyMs / wallMs) * 1000) / 1000) : 0 };
  });
  const top = [...stages].sort((a, b) => b.busyMs - a.busyMs)[0];
  return { stages, bottleneck: top ? top.stage : null };
}
