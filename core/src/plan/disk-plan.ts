import type { BlockFilter, SkipContext } from '../contracts/block-filter.js';
import type { Extent } from '../contracts/extent.js';
import type { SourceDisk } from '../contracts/source-host.js';
import type { DiskHandle, Transport } from '../contracts/transport.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import { skipRangeFilter, type ChangedRanges } from '../pipe/source-mover.js';
import type { BlockMap } from '../repository/block-map.js';
import type { RestorePoint, RestorePointDisk } from '../repository/repository.js';

/**
 * The disk plan: for one disk of a backup session, which transport reads it (and why), which ranges
 * the filters skip before reading, whether the run is full or incremental (and why), and which
 * blocks are read again to heal damaged stored copies. The embedded session and the data-mover
 * services both call these functions; nothing else decides these things.
 *
 * The full/incremental decision is made in three stages, because on more than one machine its facts
 * live in three places: the backup server knows the previous point and the host's change tracking
 * (`chooseBase`), the repository holds the base map and the damaged-blocks list (`readBase`), and
 * only the reader has the open disk: its size and whether the transport lists changes
 * (`chooseMode`). The embedded session runs the same stages in the same order (`planMode`), so both
 * placements give the same answer and the same reason.
 *
 * This module imports no session runtime and no service: both sides import it.
 */

/** Transports `transport: auto` tries first, in this order; any others follow by name. */
export const AUTO_ORDER: readonly string[] = ['hotadd', 'nbd'];

/** The order in which `transport: auto` tries the transports this reader has. */
export function autoTransportOrder(available: readonly string[]): string[] {
  return [...AUTO_ORDER.filter((n) => available.includes(n)), ...available.filter((n) => !AUTO_ORDER.includes(n))];
}

/** Where the transports come from: the job's runtime, or the proxy's plugin host. */
export interface TransportSource {
  /** Names of the transports this reader has (asked only for `auto`). */
  available(): readonly string[];
  create(name: string): Promise<Transport>;
  /** The plugin providing a transport: an error thrown by its `probe` is stamped with it. */
  providerOf(name: string): string;
  /** Who reads, for the error when no transport can (`this proxy`); absent in the embedded session. */
  reader?: string;
}

export interface TransportChoice {
  name: string;
  transport: Transport;
  /** For the report: `auto: <probe's reason>` or `job asks for <name>: <probe's reason>`. */
  reason: string;
}

/** `transport: auto` takes the first transport whose probe says yes; a named one must say yes. */
export async function chooseTransport(wanted: string, disk: SourceDisk, from: TransportSource, where: ErrorLocation): Promise<TransportChoice> {
  const names = wanted === 'auto' ? autoTransportOrder(from.available()) : [wanted];
  const refusals: string[] = [];
  for (const name of names) {
    const transport = await from.create(name);
    const probe = transport.probe
      ? await transport.probe(disk).catch((err) => {
          throw pluginError(err, from.providerOf(name), 'probe', where);
        })
      : { ok: true, reason: `${name} has no probe; assumed able to read the disk` };
    if (probe.ok) return { name, transport, reason: `${wanted === 'auto' ? 'auto' : `job asks for ${name}`}: ${probe.reason}` };
    refusals.push(`${name}: ${probe.reason}`);
  }
  throw new FerryError(
    'TRANSPORT_UNAVAILABLE',
    `no transport mode ${from.reader ? `of ${from.reader} ` : ''}can read the disk (${wanted === 'auto' ? 'auto tried ' : ''}${refusals.join('; ') || 'no transport plugins found'})`,
    where,
  );
}

/**
 * Ranges the job's filters skip before reading (swap, pagefile), in offset order; `skipRangeFilter`
 * names each one's filter. `context` reads the open disk. A range outside the disk, empty or not in
 * whole bytes is the filter's bug: `PLUGIN_CONTRACT`, naming the filter and the range.
 */
export async function skipExtents(
  filters: readonly { name: string; impl: BlockFilter }[],
  disk: SourceDisk,
  where: ErrorLocation,
  context: SkipContext,
): Promise<Extent[]> {
  const out: Extent[] = [];
  const known = disk.skipExtents ? [{ name: GUEST_SKIP, impl: { skipExtents: async () => disk.skipExtents!.map((e) => ({ ...e })) } }] : [];
  for (const f of [...filters, ...known]) {
    if (!f.impl.skipExtents) continue;
    const ranges = await f.impl.skipExtents(disk, context).catch((err) => Promise.reject(pluginError(err, f.name, 'skipExtents', where)));
    if (!Array.isArray(ranges)) throw new FerryError('PLUGIN_CONTRACT', `skipExtents returned ${typeof ranges}, not an array of ranges`, { ...where, plugin: f.name, hook: 'skipExtents' });
    for (const e of ranges) {
      const ok = typeof e === 'object' && e !== null && Number.isSafeInteger(e.offset) && Number.isSafeInteger(e.length) && e.offset >= 0 && e.length > 0 && e.offset + e.length <= context.size;
      if (!ok) {
        throw new FerryError('PLUGIN_CONTRACT', `skipExtents returned ${JSON.stringify(e)}, not a range inside the disk's ${context.size} bytes`, { ...where, plugin: f.name, hook: 'skipExtents' });
      }
      skipRangeFilter.set(e, f.name);
    }
    out.push(...ranges);
  }
  return out.sort((a, b) => a.offset - b.offset);
}

/** The name under which `SourceDisk.skipExtents` (ranges a guest runtime reported) count in `blocks.filtered`. */
export const GUEST_SKIP = 'guest';

/** A `SkipContext` over an open disk whose reads count in `counters.bytesRead`. */
export function skipContext(handle: DiskHandle, counters: { bytesRead: number }): SkipContext {
  return {
    size: handle.size,
    read: async (offset, length) => {
      const bytes = await handle.read(offset, length);
      counters.bytesRead += bytes.length;
      return bytes;
    },
  };
}

/** The reason line of a full run. */
export function fullRead(reason: string): string {
  return `full read: ${reason}`;
}

/** What an incremental run of `job` may build on: the job's newest point of the VM (points oldest first). */
export function previousOf(points: readonly RestorePoint[], job: string): RestorePoint | undefined {
  return points.filter((p) => p.job === job).at(-1);
}

/** A previous point an incremental run may build on (stage 1 found nothing against it). */
export interface BaseCandidate {
  point: string;
  disk: RestorePointDisk;
  /** Reason line if the run ends up incremental. */
  reason: string;
  /** Changed ranges the host knows itself; absent: ask the transport's `changedBlocks`. */
  extents?: Extent[];
}

export type BaseChoice = { base: BaseCandidate } | { fullReason: string };

/**
 * Stage 1, from the job's previous point of the VM and the host's snapshot (no open disk, no
 * repository): full when there is no earlier point of this disk, the host does not vouch for the
 * changes, they are tracked since another point, or the block size changed.
 */
export function chooseBase(disk: SourceDisk, previous: RestorePoint | undefined, blockSize: number): BaseChoice {
  const prev = previous?.disks.find((d) => d.name === disk.name);
  if (!previous || !prev) return { fullReason: 'no earlier restore point of this disk by this job' };
  if (!disk.changes) return { fullReason: disk.fullReason ?? 'the source host tracks no changed blocks for this disk' };
  if (disk.changes.since !== previous.id) return { fullReason: `changes are tracked since ${disk.changes.since}, but the newest restore point is ${previous.id}` };
  if (prev.blockSize !== blockSize) return { fullReason: `the block size changed from ${prev.blockSize} to ${blockSize}` };
  const tracking = disk.changeTracking ? ` (tracking ${disk.changeTracking.id})` : '';
  return {
    base: {
      point: previous.id,
      disk: prev,
      reason: `changed blocks since restore point ${previous.id}${tracking}`,
      ...(disk.changes.extents && { extents: disk.changes.extents }),
    },
  };
}

/** What stage 2 needs of the repository. */
export interface BaseStore {
  readMap(disk: RestorePointDisk): Promise<BlockMap>;
  blocks: { load(): Promise<void>; needsHeal(hash: Uint8Array): boolean };
}

/** Stage 2, at the repository: the base map (full when it cannot be read) and the blocks to heal. */
export async function readBase(repo: BaseStore, base: BaseCandidate): Promise<{ map: BlockMap; heal: Extent[] } | { fullReason: string }> {
  let map: BlockMap;
  try {
    map = await repo.readMap(base.disk);
  } catch (err) {
    return { fullReason: `the block map of ${base.point} cannot be read (${(err as Error).message})` };
  }
  await repo.blocks.load();
  return { map, heal: healRanges(repo.blocks, map) };
}

/**
 * Self-heal: blocks of the base map that have no undamaged stored copy are read again even though
 * changed-block tracking says they did not change, so the session stores them anew.
 */
export function healRanges(blocks: { needsHeal(hash: Uint8Array): boolean }, base: BlockMap): Extent[] {
  const heal: Extent[] = [];
  for (let i = 0; i < base.blockCount; i++) {
    const hash = base.get(i);
    if (hash && blocks.needsHeal(hash)) heal.push({ offset: i * base.blockSize, length: base.lengthOf(i) });
  }
  return heal;
}

/** What the reader needs to finish the decision (the services send it as `ReadTask.incremental`). */
export interface IncrementalCandidate {
  /** Size of the disk in the base point: a resized disk is read in full. */
  baseSize: number;
  reason: string;
  extents?: Extent[];
  /** Blocks of the base map to read again (self-heal). */
  heal: Extent[];
}

export function incrementalCandidate(base: BaseCandidate, heal: Extent[]): IncrementalCandidate {
  return { baseSize: base.disk.sizeBytes, reason: base.reason, heal, ...(base.extents && { extents: base.extents }) };
}

export type ModeDecision = { mode: 'full'; reason: string } | { mode: 'incremental'; reason: string; changed: ChangedRanges };

/**
 * Stage 3, with the open disk: full when the disk was resized or neither the host nor the transport
 * can list the changes; otherwise incremental over the changed ranges plus the ranges to heal.
 */
export function chooseMode(inc: IncrementalCandidate, handle: DiskHandle): ModeDecision {
  if (inc.baseSize !== handle.size) return { mode: 'full', reason: fullRead(`the disk was resized from ${inc.baseSize} to ${handle.size} bytes`) };
  const changed: ChangedRanges | undefined = inc.extents ? { extents: inc.extents } : handle.changedBlocks && { query: handle.changedBlocks.bind(handle) };
  if (!changed) return { mode: 'full', reason: fullRead('the transport cannot list changed blocks') };
  const heal = inc.heal.length ? `; reading ${inc.heal.length} block(s) again whose stored copy is damaged (self-heal)` : '';
  return { mode: 'incremental', reason: `${inc.reason}${heal}`, changed: withRanges(changed, inc.heal) };
}

/**
 * All three stages in one process (the embedded session). Incremental only when the host vouches for
 * the changes since this job's previous point of the VM, the transport (or the host) can list them
 * and the disk's geometry is unchanged: never an incremental that could miss a write.
 */
export async function planMode(
  disk: SourceDisk,
  previous: RestorePoint | undefined,
  blockSize: number,
  repo: BaseStore,
  handle: DiskHandle,
): Promise<ModeDecision & { base?: BlockMap }> {
  const candidate = chooseBase(disk, previous, blockSize);
  if ('fullReason' in candidate) return { mode: 'full', reason: fullRead(candidate.fullReason) };
  const read = await readBase(repo, candidate.base);
  if ('fullReason' in read) return { mode: 'full', reason: fullRead(read.fullReason) };
  const decided = chooseMode(incrementalCandidate(candidate.base, read.heal), handle);
  return decided.mode === 'incremental' ? { ...decided, base: read.map } : decided;
}

/** Changed ranges plus blocks to read again (self-heal). */
export function withRanges(changed: ChangedRanges, extra: Extent[]): ChangedRanges {
  if (extra.length === 0) return changed;
  if ('extents' in changed) return { extents: [...changed.extents, ...extra].sort((a, b) => a.offset - b.offset) };
  const query = async (offset: number, length: number): Promise<Extent[]> => {
    const clipped = extra
      .filter((e) => e.offset < offset + length && e.offset + e.length > offset)
      .map((e) => {
        const start = Math.max(offset, e.offset);
        return { offset: start, length: Math.min(offset + length, e.offset + e.length) - start };
      });
    return [...(await changed.query(offset, length)), ...clipped].sort((a, b) => a.offset - b.offset);
  };
  return { query };
}
