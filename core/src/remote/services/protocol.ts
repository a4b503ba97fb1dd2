import type { Extent } from '../../contracts/extent.js';
import type { RetentionPolicy } from '../../maintenance/retention-policy.js';
import type { DamagedPoint, RestorePoint, RestorePointDisk } from '../../repository/repository.js';
import type { RetentionOutcome, VerifyOutcome } from '../../report/session-report.js';
import type { ChangeTracking, SourceDisk } from '../../contracts/source-host.js';
import { FerryError, type ErrorCode, type ErrorLocation, type ReportedError } from '../../errors.js';
import { MAX_BLOCK_SIZE, MIN_BLOCK_SIZE } from '../../job/job-schema.js';
import { STAGES, type Stage, type StageReport } from '../../pipe/stage-meter.js';
import type { Connection, WireMessage } from '../wire/index.js';
import { RequestPump, type PendingRequest } from '../wire/request-pump.js';

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
 *   point.open {vm, point} → {point, idKey?}: random access to one restore point (`ferry serve`); the
 *     service takes a `restore` lock held until the connection ends
 *   point.map {vm, point, disk} → `restore.map` {point} (block map in the body), then {blocks}
 *   blocks.read {hashes} → `restore.block` {h} with the stored block object in the body for each
 *     (after `point.open`; the client checks and decodes them as a restore does), then {blocks}
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
  /** The pipe protocol version the data pipe's HELLO agreed on; a proxy refuses one it does not speak (PIPE_VERSION). */
  version: number;
  /** Stable over reconnects: the proxy keeps counters and busy times per task. */
  taskId: string;
  vm: string;
  disk: SourceDisk;
  transport: string;
  /** The job's options of the named transport (none for `auto`), paths made absolute by the job loader. */
  transportOptions?: PluginOptions;
  filters: string[];
  /** The job's options of each filter, by position in `filters` (`{}` for a plain name). */
  filterOptions?: PluginOptions[];
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
  if (t.transportOptions !== undefined && !isObject(t.transportOptions)) return 'transportOptions must be an object';
  if (t.filterOptions !== undefined && (!Array.isArray(t.filterOptions) || t.filterOptions.length !== t.filters.length || !t.filterOptions.every(isObject))) {
    return 'filterOptions must be an object for each of filters';
  }
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
  /** Blocks each filter dropped, by its `filters:` name (`SourceCounters.filtered`). */
  filtered?: Record<string, number>;
  /** Bytes of the filters' skip ranges not read (`SourceCounters.skippedBytes`); missing from older proxies: 0. */
  swapBytesSkipped?: number;
  /** What the filters' `skipExtents` noted (`SkipContext.note`), for the disk's report. */
  swapNotes?: string[];
}

/**
 * A plugin's options as a job gives them (`transport: { name, ...options }`, a `filters:` item): JSON
 * values the backup server validated against its own plugin's `configSchema`; the proxy validates
 * them again against its own (`docs/job-file.md`, "Plugin options").
 */
export type PluginOptions = Record<string, unknown>;

/** One disk the backup server hands to the repository service. */
export interface DiskOrder {
  session: string;
  vm: string;
  disk: SourceDisk;
  /** Proxy address `host:port`. */
  proxy: string;
  transport: string;
  transportOptions?: PluginOptions;
  filters: string[];
  /** By position in `filters`. */
  filterOptions?: PluginOptions[];
  compressor: { name: string; level: number };
  blockSize: number;
  /** Candidate base for an incremental run (the server checked what needs no open disk). */
  base?: { point: string; disk: RestorePointDisk; reason: string; extents?: Extent[] };
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
  /** Filters other than `zero` that dropped blocks (the manifest's `filtered`). */
  filtered?: Record<string, number>;
  transport: string;
  mode: 'full' | 'incremental';
  changeTracking?: ChangeTracking;
}

/**
 * The control verbs (backup server → repository service): the request header of each (besides
 * `id` and `op`) and what the answer's `result` holds. `ControlChannel.request` takes them, so a
 * sender's misspelt verb or field is a compile error; the service checks every header on receipt
 * (`controlRequestProblem`) and the channel checks the answers it relies on (`controlReplyProblem`).
 */
export interface ControlVerbs {
  'session.open': { req: { job: string; session: string; vms: string[] }; res: { location: string } };
  'points.list': { req: { vm?: string }; res: { points: RestorePoint[]; damaged?: DamagedPoint[] } };
  'disk.receive': { req: { order: DiskOrder }; res: DiskOutcome };
  'point.commit': { req: { vm: string; point: Omit<RestorePoint, 'format' | 'version' | 'disks' | 'vm'>; disks: CommitDisk[] }; res: { point: RestorePoint } };
  'point.discard': { req: { diskIds: string[] }; res: Record<string, never> };
  'session.abort': { req: Record<string, never>; res: Record<string, never> };
  'session.end': {
    req: { vms: string[]; retention?: RetentionPolicy; verify?: { samplePercent: number }; points?: { vm: string; id: string }[] };
    res: { retention?: RetentionOutcome; verify?: VerifyOutcome };
  };
  'restore.open': { req: RestoreRequest; res: { blocks: number } };
  'point.open': { req: { vm: string; point: string }; res: { point: RestorePoint; idKey?: string } };
  'point.map': { req: { vm: string; point: string; disk: string }; res: { blocks: number } };
  'blocks.read': { req: { hashes: string[] }; res: { blocks: number } };
}

/** Block ids one `blocks.read` may ask for. */
export const MAX_BLOCKS_PER_READ = 64;

export type ControlVerb = keyof ControlVerbs;
export type ControlRequest<V extends ControlVerb> = ControlVerbs[V]['req'];
export type ControlReply<V extends ControlVerb> = ControlVerbs[V]['res'];

/** `restore.open`: `from` and `restoreId` are set when a client resumes after a dropped connection. */
export interface RestoreRequest {
  vm: string;
  disk: string;
  point: string;
  from?: number;
  restoreId?: string;
}

/**
 * One check of a received value: undefined when it holds, else the path below the value and what is
 * wrong (`[2] must be a string`, `.order.blockSize must be ...`), so a problem names its field.
 */
type Check = (v: unknown) => string | undefined;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const str: Check = (v) => (typeof v === 'string' ? undefined : ' must be a string');
const name: Check = (v) => (typeof v === 'string' && v !== '' ? undefined : ' must be a non-empty string');
const bool: Check = (v) => (typeof v === 'boolean' ? undefined : ' must be true or false');
const num: Check = (v) => (typeof v === 'number' && Number.isFinite(v) ? undefined : ' must be a number');
const int =
  (lo = 0, hi = Number.MAX_SAFE_INTEGER): Check =>
  (v) =>
    Number.isInteger(v) && (v as number) >= lo && (v as number) <= hi ? undefined : ` must be an integer from ${lo} to ${hi}`;
const oneOf =
  (...values: string[]): Check =>
  (v) =>
    values.includes(v as string) ? undefined : ` must be one of ${values.join(', ')}`;
const optional =
  (c: Check): Check =>
  (v) =>
    v === undefined ? undefined : c(v);
const arrayOf =
  (c: Check): Check =>
  (v) => {
    if (!Array.isArray(v)) return ' must be an array';
    for (let i = 0; i < v.length; i++) {
      const p = c(v[i]);
      if (p) return `[${i}]${p}`;
    }
    return undefined;
  };
const obj =
  (fields: Record<string, Check>): Check =>
  (v) => {
    if (!isObject(v)) return ' must be an object';
    for (const [k, c] of Object.entries(fields)) {
      const p = c(v[k]);
      if (p) return `.${k}${p}`;
    }
    return undefined;
  };
/** Values of a string-keyed record (changeTracking, filtered counts). */
const recordOf =
  (c: Check): Check =>
  (v) => {
    if (!isObject(v)) return ' must be an object';
    for (const [k, x] of Object.entries(v)) {
      const p = c(x);
      if (p) return `.${k}${p}`;
    }
    return undefined;
  };
const blockSize: Check = (v) =>
  int(MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)(v) === undefined && ((v as number) & ((v as number) - 1)) === 0
    ? undefined
    : ` must be a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`;
const extents = arrayOf(obj({ offset: int(), length: int(1) }));
const mode = oneOf('full', 'incremental');
/** Plugin options: any JSON object (its keys are the plugin's to check, against its configSchema). */
const options: Check = (v) => (isObject(v) ? undefined : ' must be an object');
const sourceDisk = obj({ name, size: optional(int()), path: optional(str), format: optional(str), skipExtents: optional(extents) });
const pointDisk = obj({
  name,
  sizeBytes: int(),
  blockSize,
  map: name,
  mapSha256: name,
  blocks: int(),
  zeroBlocks: int(),
  filtered: optional(recordOf(int())),
  transport: str,
  mode,
  changeTracking: optional(recordOf(str)),
});
const restorePoint = obj({ id: name, job: str, vm: name, session: str, createdAt: str, disks: arrayOf(pointDisk) });

const REQUESTS: { [V in ControlVerb]: Check } = {
  'session.open': obj({ job: name, session: name, vms: arrayOf(name) }),
  'points.list': obj({ vm: optional(name) }),
  'disk.receive': obj({
    order: obj({
      session: name,
      vm: name,
      disk: sourceDisk,
      proxy: name,
      transport: name,
      transportOptions: optional(options),
      filters: arrayOf(name),
      filterOptions: optional(arrayOf(options)),
      compressor: obj({ name, level: int(-1000, 1000) }),
      blockSize,
      base: optional(obj({ point: name, disk: pointDisk, reason: str, extents: optional(extents) })),
      fullReason: optional(str),
    }),
  }),
  'point.commit': obj({
    vm: name,
    point: obj({ id: name, job: str, session: str, createdAt: str, definition: optional(obj({ format: str, text: str })) }),
    disks: arrayOf(obj({ diskId: name, name, zeroBlocks: int(), filtered: optional(recordOf(int())), transport: str, mode, changeTracking: optional(recordOf(str)) })),
  }),
  'point.discard': obj({ diskIds: arrayOf(str) }),
  'session.abort': obj({}),
  'session.end': obj({
    vms: arrayOf(name),
    retention: optional(obj({ restorePoints: int(1), weekly: optional(int()), monthly: optional(int()), yearly: optional(int()) })),
    verify: optional(obj({ samplePercent: num })),
    points: optional(arrayOf(obj({ vm: name, id: name }))),
  }),
  'restore.open': obj({ vm: name, disk: name, point: name, from: optional(int()), restoreId: optional(str) }),
  'point.open': obj({ vm: name, point: name }),
  'point.map': obj({ vm: name, point: name, disk: name }),
  'blocks.read': obj({
    hashes: (v) =>
      Array.isArray(v) && v.length >= 1 && v.length <= MAX_BLOCKS_PER_READ && v.every((x) => typeof x === 'string' && /^[0-9a-f]{64}$/.test(x))
        ? undefined
        : ` must be 1 to ${MAX_BLOCKS_PER_READ} block ids (SHA-256 in hex)`,
  }),
};

const taskInfo = obj({ sizeBytes: int(), transport: str, transportReason: str, mode, modeReason: str });
const taskSummary = obj({ bytesRead: int(), zeroBytesSkipped: int(), bytesTransferred: int(), resentBlocks: int(), busy: recordOf(num), filtered: optional(recordOf(int())), swapBytesSkipped: optional(int()), swapNotes: optional(arrayOf(str)) });

/** Answers the server acts on; the rest it only reports. */
const REPLIES: Partial<{ [V in ControlVerb]: Check }> = {
  'session.open': obj({ location: str }),
  'points.list': obj({ points: arrayOf(restorePoint) }),
  'disk.receive': obj({
    diskId: name,
    info: taskInfo,
    summary: taskSummary,
    target: obj({ bytesWritten: int(), blocksNew: int(), blocksDeduped: int(), blocksZero: int(), blocksUnchanged: int(), healed: int() }),
    blocks: int(),
    reconnects: int(),
    stages: arrayOf(obj({ stage: oneOf(...STAGES), busyMs: num, busyShare: num })),
  }),
  'point.commit': obj({ point: restorePoint }),
  'restore.open': obj({ blocks: int() }),
  'point.open': obj({ point: restorePoint, idKey: optional(str) }),
  'point.map': obj({ blocks: int() }),
  'blocks.read': obj({ blocks: int() }),
};

function isVerb(op: unknown): op is ControlVerb {
  return typeof op === 'string' && Object.hasOwn(REQUESTS, op);
}

/**
 * What the repository service checks before it acts on a control request (an authenticated peer may
 * still send nonsense): PIPE_PROTOCOL naming the verb and the field, or undefined.
 */
export function controlRequestProblem(header: unknown): FerryError | undefined {
  if (!isObject(header)) return new FerryError('PIPE_PROTOCOL', 'a request without a header object');
  const { id, op, ...args } = header;
  if (!isVerb(op)) return new FerryError('PIPE_PROTOCOL', `unknown request "${String(op)}"`);
  if (!Number.isInteger(id)) return new FerryError('PIPE_PROTOCOL', `${op}: header.id must be an integer`);
  const p = REQUESTS[op](args);
  return p ? new FerryError('PIPE_PROTOCOL', `${op}: header${p}`) : undefined;
}

/** What the backup server checks in an answer before it uses it: PIPE_PROTOCOL, or undefined. */
export function controlReplyProblem(op: string, result: unknown, where: ErrorLocation = {}): FerryError | undefined {
  const check = isVerb(op) ? REPLIES[op] : undefined;
  const p = check?.(result);
  return p ? new FerryError('PIPE_PROTOCOL', `${op} answer: result${p}`, where) : undefined;
}

/**
 * Data-pipe messages checked on receipt (the read task has `readTaskProblem`; block records are
 * checked where they are placed in the map). Proxy side: `known!`, `ack`; repository side: the
 * task's figures.
 */
const PIPE_MESSAGES: Record<string, Check> = {
  'known!': obj({ q: int(1), have: arrayOf(bool) }),
  ack: obj({ upTo: int() }),
  'task.ok': taskInfo,
  end: taskSummary,
};

/** A data-pipe message of a checked type with a malformed header: PIPE_PROTOCOL naming the field, or undefined. */
export function pipeMessageProblem(m: WireMessage, where: ErrorLocation = {}): FerryError | undefined {
  const p = Object.hasOwn(PIPE_MESSAGES, m.type) ? PIPE_MESSAGES[m.type](m.header ?? {}) : undefined;
  return p ? new FerryError('PIPE_PROTOCOL', `${m.type}: header${p}`, where) : undefined;
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
  private readonly calls: RequestPump<PendingRequest & { op: string }>;

  constructor(
    readonly conn: Connection,
    private readonly where: ErrorLocation = {},
  ) {
    this.calls = new RequestPump(conn, {
      answerType: 'res',
      closed: () => new FerryError('PIPE_CLOSED', `the repository service at ${conn.peer.address} closed the connection`, where),
      settle: (w, m) => {
        if (!m.header?.ok) return w.reject(errorFromWire(m.header?.error as ReportedError, this.where));
        const bad = controlReplyProblem(w.op, m.header.result, this.where);
        if (bad) w.reject(bad);
        else w.resolve(m.header.result);
      },
    });
  }

  request<V extends ControlVerb>(op: V, args: ControlRequest<V>, opts: { body?: Uint8Array; onMessage?: (m: WireMessage) => void } = {}): Promise<ControlReply<V>> {
    return new Promise<ControlReply<V>>((resolve, reject) => {
      this.calls.start((id) => ({ type: 'req', header: { id, op, ...args }, body: opts.body }), {
        op,
        resolve: resolve as (v: unknown) => void,
        reject,
        onMessage: opts.onMessage,
      });
    });
  }

  close(): Promise<void> {
    return this.calls.close();
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
