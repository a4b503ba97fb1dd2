import { FerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import { BlockMap } from '../repository/block-map.js';
import { lockForReading, RepositoryLock } from '../repository/repository-lock.js';
import { Repository, type RestorePoint, type RestorePointDisk } from '../repository/repository.js';

export interface CopyOptions {
  /** Only this VM's points (default: every VM in the source). */
  vm?: string;
  /** A point id, `latest` (each VM's newest, the default) or `all`. */
  point?: string;
  /** Exactly these points (a session's new ones, `copyTo:`); instead of `vm` and `point`. */
  points?: { vm: string; id: string }[];
  /** The compressor and level blocks are stored with in the target (the job's `storage.compression`). */
  compressor: { name: string; level: number };
  /** The job asking, recorded in the locks. */
  job?: string;
  /** Blocks in flight at once (default 16). */
  concurrency?: number;
}

export interface CopiedPoint {
  vm: string;
  restorePoint: string;
  /** `copied` now, or `present`: the target had it already (nothing sent). */
  status: 'copied' | 'present';
  blocksTransferred: number;
}

export interface CopyReport {
  from: string;
  to: string;
  points: CopiedPoint[];
  blocks: {
    /** Non-zero block entries of the copied maps. */
    total: number;
    /** Stored in the target by this run (read, checked, encoded for the target, written). */
    transferred: number;
    /** The target had them already (or another entry of this run stored them). */
    present: number;
    zero: number;
  };
  /** Encoded bytes written to the target's packs. */
  bytesTransferred: number;
  durationMs: number;
}

/**
 * `ferry copy`: copies restore points from one repository to another (any backends, encrypted or
 * not), storing only the blocks the target lacks. Every block sent is read out of the source and
 * checked there (CRC-32 and SHA-256, or the keyed id), then encoded for the target (its compressor,
 * its encryption and keyed ids: block ids differ between encrypted repositories, so a block is
 * re-identified, and with the same plain ids the target id must equal the source's). A point is
 * committed in the target only after all its blocks are durable, under the same id, so a copy that
 * is killed leaves no partial point and the next run skips the blocks that already landed and the
 * points the target has. Locks: `restore` on the source (read only), `backup` on the target's VMs.
 *
 * Limit: between two encrypted repositories (or plain and encrypted) a block's target id is known
 * only after reading it, so the source is read in full for each point copied, while only missing
 * blocks are written; between plain repositories a block the target has is never read.
 */
export async function copyPoints(src: Repository, srcCodec: BlockCodec, dst: Repository, dstCodec: BlockCodec, opts: CopyOptions): Promise<CopyReport> {
  const t0 = performance.now();
  const report: CopyReport = { from: src.backend.location, to: dst.backend.location, points: [], blocks: { total: 0, transferred: 0, present: 0, zero: 0 }, bytesTransferred: 0, durationMs: 0 };
  if (src.id === dst.id) throw new FerryError('CLI_USAGE', `source and target are the same repository (${src.id}): nothing to copy`, { object: dst.backend.location });
  const points = await selectPoints(src, opts);
  const vms = [...new Set(points.map((p) => p.vm))];
  const readLock = await lockForReading(src.backend, { operation: 'restore', vms, job: opts.job, command: 'copy' });
  const lock = await RepositoryLock.acquire(dst.backend, { operation: 'backup', vms, job: opts.job, command: 'copy' });
  try {
    await dst.blocks.load();
    const sameIds = !src.idKey && !dst.idKey;
    /** Source id (hex) → target id, for keyed ids: each distinct block is read once per run. */
    const translated = new Map<string, Buffer>();
    for (const point of points) {
      if (await dst.backend.has(Repository.pointKey(point.vm, point.id))) {
        report.points.push({ vm: point.vm, restorePoint: point.id, status: 'present', blocksTransferred: 0 });
        continue;
      }
      let transferred = 0;
      const maps: BlockMap[] = [];
      for (const disk of point.disks) {
        const from = await src.readMap(disk);
        const to = new BlockMap(from.diskSize, from.blockSize);
        let next = 0;
        const worker = async (): Promise<void> => {
          for (let i = next++; i < from.blockCount; i = next++) {
            const h = from.get(i);
            if (!h) {
              report.blocks.zero++;
              continue;
            }
            report.blocks.total++;
            const hex = h.toString('hex');
            const known = sameIds ? (await dst.blocks.has(h) ? h : undefined) : translated.get(hex);
            if (known) {
              to.set(i, known);
              report.blocks.present++;
              continue;
            }
            const raw = await src.blocks.read(h, srcCodec);
            const { hash, encoded } = await dstCodec.encode(raw, opts.compressor.name, opts.compressor.level);
            if (sameIds && !hash.equals(h)) {
              throw new FerryError('REPO_CORRUPT_OBJECT', `block ${hex} re-encoded for the target has id ${hash.toString('hex')}`, { object: `block ${hex}`, vm: point.vm, disk: disk.name });
            }
            translated.set(hex, hash);
            to.set(i, hash);
            if (dst.blocks.reserve(hash)) {
              await dst.blocks.add(hash, encoded);
              transferred++;
              report.blocks.transferred++;
              report.bytesTransferred += encoded.length;
            } else {
              report.blocks.present++;
            }
          }
        };
        await Promise.all(Array.from({ length: opts.concurrency ?? 16 }, worker));
        maps.push(to);
      }
      await lock.assertHeld();
      const disks = point.disks.map(({ map: _m, mapSha256: _s, ...rest }) => rest) as RestorePointDisk[];
      await dst.commitPoint({ id: point.id, job: point.job, vm: point.vm, session: point.session, createdAt: point.createdAt, disks }, maps);
      report.points.push({ vm: point.vm, restorePoint: point.id, status: 'copied', blocksTransferred: transferred });
    }
    await dst.blocks.flush();
  } finally {
    await lock.release();
    await readLock?.release();
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

async function selectPoints(src: Repository, opts: CopyOptions): Promise<RestorePoint[]> {
  if (opts.points) return Promise.all(opts.points.map((p) => src.getPoint(p.vm, p.id)));
  const all = await src.listPoints(opts.vm);
  const which = opts.point ?? 'latest';
  if (which === 'all') return all;
  if (which === 'latest') {
    const newest = new Map<string, RestorePoint>();
    for (const p of all) newest.set(p.vm, p); // oldest first: the last one wins
    return [...newest.values()];
  }
  const found = all.filter((p) => p.id === which);
  if (!found.length) {
    throw new FerryError('REPO_POINT_NOT_FOUND', `no restore point "${which}"${opts.vm ? ` for vm ${opts.vm}` : ''} in ${src.backend.location}`, opts.vm ? { vm: opts.vm } : {});
  }
  return found;
}
