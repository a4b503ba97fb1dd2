import { FerryError, isFerryError } from '../errors.js';
import { BlockMap, HASH_SIZE } from '../repository/block-map.js';
import { Repository, sortPoints, type RestorePoint } from '../repository/repository.js';

/** A manifest or block map that cannot be read, with the point and disk it belongs to. */
export interface PointProblem {
  object: string;
  kind: 'manifest' | 'map';
  vm?: string;
  restorePoint?: string;
  disk?: string;
  error: FerryError;
}

export interface LoadedPoints {
  points: RestorePoint[];
  /** Manifest keys read (gc compares them later to find points committed meanwhile). */
  keys: Set<string>;
  problems: PointProblem[];
}

/**
 * Reads every manifest, collecting unreadable ones as problems instead of failing: a health check
 * must report all damage, not stop at the first. A manifest deleted between listing and reading was
 * pruned meanwhile and is skipped.
 */
export async function loadPoints(repo: Repository, skip: Set<string> = new Set()): Promise<LoadedPoints> {
  const out: LoadedPoints = { points: [], keys: new Set(), problems: [] };
  const keys = (await repo.listPointKeys()).filter((k) => !skip.has(k));
  await inBatches(keys, 16, async (key) => {
    try {
      out.points.push(await repo.readPoint(key));
      out.keys.add(key);
    } catch (err) {
      if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return;
      out.problems.push({ object: key, kind: 'manifest', error: asFerry(err, key) });
    }
  });
  sortPoints(out.points);
  return out;
}

/**
 * Calls `fn` with each disk's block map, four maps in flight. Unreadable maps become problems; a map
 * whose point was pruned meanwhile (its manifest is gone) is skipped.
 */
export async function eachMap(
  repo: Repository,
  points: RestorePoint[],
  fn: (point: RestorePoint, disk: number, map: BlockMap) => void,
  problems: PointProblem[],
): Promise<void> {
  const jobs = points.flatMap((p) => p.disks.map((_, i) => ({ p, i })));
  await inBatches(jobs, 4, async ({ p, i }) => {
    const disk = p.disks[i];
    let map: BlockMap;
    try {
      map = await repo.readMap(disk);
    } catch (err) {
      if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND') && !(await repo.backend.has(Repository.pointKey(p.vm, p.id)))) return;
      problems.push({ object: disk.map, kind: 'map', vm: p.vm, restorePoint: p.id, disk: disk.name, error: asFerry(err, disk.map) });
      return;
    }
    fn(p, i, map);
  });
}

/** Calls `fn(hex, blockIndex)` for every non-zero entry of a map. */
export function forEachHash(map: BlockMap, fn: (hex: string, index: number) => void): void {
  const e = map.entries;
  for (let i = 0, at = 0; i < map.blockCount; i++, at += HASH_SIZE) {
    if (e[at] === 0 && map.get(i) === undefined) continue;
    fn(e.toString('hex', at, at + HASH_SIZE), i);
  }
}

/**
 * Every hash some restore point needs. A point whose manifest cannot be read still needs what the
 * block maps in its folder (`points/<vm>/<id>/`) name, so those count too. With `strict`, anything
 * still unknown (an unreadable map) is GC_UNSAFE: garbage collection cannot know what such a point
 * needs, so it must not delete anything.
 */
export async function referencedHashes(repo: Repository, loaded: LoadedPoints, strict: boolean): Promise<Set<string>> {
  const out = new Set<string>();
  const problems: PointProblem[] = [];
  for (const p of loaded.problems) {
    if (p.kind !== 'manifest' || !(await addFolderMaps(repo, p.object, out, problems))) problems.push(p);
  }
  await eachMap(repo, loaded.points, (_p, _i, map) => forEachHash(map, (hex) => out.add(hex)), problems);
  if (strict && problems.length) {
    const p = problems[0];
    throw new FerryError(
      'GC_UNSAFE',
      `${problems.length} manifest(s) or block map(s) cannot be read, so what they need is unknown (${p.error.message}); ` +
        'run `ferry verify` to see the damage, then remove the broken restore points (`ferry forget`)',
      { object: p.object, vm: p.vm, disk: p.disk },
    );
  }
  return out;
}

/**
 * Adds the hashes of every block map in a damaged manifest's folder; false (and a problem for each
 * unreadable map) when one of them cannot be read either.
 */
async function addFolderMaps(repo: Repository, manifest: string, out: Set<string>, problems: PointProblem[]): Promise<boolean> {
  const folder = `${manifest.slice(0, -'.json'.length)}/`;
  let ok = true;
  for await (const key of repo.backend.list(folder)) {
    if (!/\/disk-\d+\.map$/.test(key)) continue;
    try {
      forEachHash(BlockMap.decode(await repo.backend.get(key), key), (hex) => out.add(hex));
    } catch (err) {
      ok = false;
      problems.push({ object: key, kind: 'map', error: asFerry(err, key) });
    }
  }
  return ok;
}

function asFerry(err: unknown, object: string): FerryError {
  return err instanceof FerryError ? err : new FerryError('REPO_IO', String((err as Error)?.message ?? err), { object });
}

export async function inBatches<T>(items: T[], width: number, fn: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(width, items.length) }, worker));
}
