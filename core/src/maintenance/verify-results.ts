import type { Repository, RestorePoint } from '../repository/repository.js';
import { DAMAGED_BLOCKS_KEY, readDamagedBlocks, writeDamagedBlocks, type DamagedBlock } from '../repository/damaged-blocks.js';
import { packKey } from '../repository/pack-writer.js';
import type { BlockFinding } from './block-check.js';
import { eachMap, forEachHash, type PointProblem } from './points-reader.js';

/** Where a damaged block is needed: one disk of one restore point, at these byte offsets. */
export interface BlockUse {
  vm: string;
  restorePoint: string;
  disk: string;
  offsets: number[];
}

/** A damaged block as `ferry verify --json` prints it. */
export interface DamagedBlockReport extends Omit<BlockFinding, 'detail'> {
  /** The error the check raised, with the object (pack and offset) named. */
  message: string;
  neededBy: BlockUse[];
}

export interface AffectedPoint {
  vm: string;
  restorePoint: string;
  disks: { disk: string; damagedBlocks: number; mapDamaged: boolean }[];
}

/**
 * A second pass over the block maps, only when something is damaged: which points, disks and
 * offsets need each damaged hash. Keeping every map in memory during the scan would cost far more
 * than reading the (small) maps again.
 */
export async function whoNeeds(repo: Repository, points: RestorePoint[], damaged: Set<string>): Promise<Map<string, BlockUse[]>> {
  const out = new Map<string, BlockUse[]>();
  await eachMap(
    repo,
    points,
    (p, i, map) => {
      const uses = new Map<string, BlockUse>();
      forEachHash(map, (hex, block) => {
        if (!damaged.has(hex)) return;
        let use = uses.get(hex);
        if (!use) {
          use = { vm: p.vm, restorePoint: p.id, disk: p.disks[i].name, offsets: [] };
          uses.set(hex, use);
          const list = out.get(hex) ?? [];
          list.push(use);
          out.set(hex, list);
        }
        use.offsets.push(block * map.blockSize);
      });
    },
    [],
  );
  return out;
}

/** Restore points that cannot restore completely, with the count of bad blocks per disk. */
export function affectedPoints(blocks: DamagedBlockReport[], problems: PointProblem[]): AffectedPoint[] {
  const points = new Map<string, AffectedPoint>();
  const disk = (vm: string, id: string, name: string): AffectedPoint['disks'][number] => {
    const key = `${vm}\n${id}`;
    let p = points.get(key);
    if (!p) points.set(key, (p = { vm, restorePoint: id, disks: [] }));
    let d = p.disks.find((x) => x.disk === name);
    if (!d) p.disks.push((d = { disk: name, damagedBlocks: 0, mapDamaged: false }));
    return d;
  };
  for (const b of blocks) for (const u of b.neededBy) disk(u.vm, u.restorePoint, u.disk).damagedBlocks += u.offsets.length;
  for (const p of problems) {
    if (p.kind === 'map' && p.vm && p.restorePoint && p.disk) disk(p.vm, p.restorePoint, p.disk).mapDamaged = true;
  }
  return [...points.values()].sort((a, b) => a.vm.localeCompare(b.vm) || a.restorePoint.localeCompare(b.restorePoint));
}

/**
 * Updates the damaged-blocks list: this run's findings replace what it knew about the copies it
 * read (a copy that now reads well is cleared); entries about copies it did not read stay while their
 * pack exists. Written only when it changes. Returns the list's key, or null when it is empty.
 */
export async function recordFindings(repo: Repository, checked: string[], findings: BlockFinding[]): Promise<string | null> {
  const old = await readDamagedBlocks(repo.backend);
  const now = new Date().toISOString();
  const reRead = new Set(checked.map((h) => `${h}@${repo.blocks.locate(h)?.pack ?? ''}`));
  const keep: DamagedBlock[] = [];
  for (const e of old) {
    if (reRead.has(`${e.hash}@${e.pack ?? ''}`)) continue;
    if (e.pack === null ? repo.blocks.locate(e.hash) === undefined : await repo.backend.has(packKey(e.pack))) keep.push(e);
  }
  const since = new Map(old.map((e) => [`${e.hash}@${e.pack ?? ''}`, e.foundAt]));
  const found = findings.map(
    (f): DamagedBlock => ({ ...f, foundAt: since.get(`${f.hash}@${f.pack ?? ''}`) ?? now }),
  );
  const next = [...keep, ...found];
  const sig = (l: DamagedBlock[]): string => JSON.stringify(l.map((e) => [e.hash, e.pack, e.reason]).sort());
  if (sig(next) !== sig(old)) await writeDamagedBlocks(repo.backend, next);
  return next.length ? DAMAGED_BLOCKS_KEY : null;
}
