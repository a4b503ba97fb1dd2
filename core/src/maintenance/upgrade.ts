import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { INDEXES_PREFIX, type IndexedPack } from '../repository/index-object-v2.js';
import { decodeIndex, packFileSize, readPackTrailer, type PackEntry } from '../repository/pack.js';
import { packIdOf, packKey } from '../repository/pack-writer.js';
import { REPOSITORY_CONFIG_KEY, type Repository } from '../repository/repository.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import { MUTABLE_PREFIX } from '../repository/repository-storage.js';
import { pointRetainUntil } from '../repository/retention-dates.js';
import { sha256 } from '../util/checksums.js';
import { writeIndexObjectV2 } from './gc-v2.js';

export interface UpgradeReport {
  repository: string;
  fromVersion: number;
  version: 2;
  /** Packs listed by the version 2 index objects written (condemned ones included). */
  packs: number;
  indexObjectsWritten: number;
  /** Version 1 index objects that failed their checks and were rebuilt from their intact packs. */
  indexObjectsRebuilt: number;
  /** Version 1 index objects whose packs are damaged or gone too: their blocks count as missing. */
  indexObjectsLost: string[];
  /** Mutable objects copied under `mutable/` (damaged-blocks list, gc state). */
  mutableObjectsCopied: number;
  /**
   * Immutable repositories: objects given retain-until dates (`RepositoryBackend.retain`), since
   * version 2 never lifts version 1's protection: points' manifests and maps their point's date,
   * packs and index objects the latest point's date.
   */
  objectsRetained?: number;
  /** Version 1 objects deleted after the commit (index objects, gc state, health record, old locks). */
  leftoversRemoved: number;
  durationMs: number;
}

/** Packs per index object the upgrade writes (a 100 TiB repository of 16 MiB packs: ~1,600 objects). */
const PACKS_PER_OBJECT = 4096;
const V1_MUTABLE = ['health/', 'gc/'];
const V1_LEFTOVERS = ['index/', 'gc/', 'health/', 'locks/'];

/**
 * `ferry repository upgrade`: moves a version 1 repository to version 2 (`docs/repository-format.md`,
 * "Upgrade from version 1"), crash-safe at every step:
 *
 * 1. Under an `upgrade` lock (it excludes every operation), remove what a killed upgrade left under
 *    `indexes/` and `mutable/` (version 1 ignores both; an old attempt may list packs gc deleted
 *    since), then write version 2 index objects for every pack a version 1 index object or a
 *    condemned copy lists (a damaged index object rebuilt from its pack when the pack is intact).
 * 2. Copy the damaged-blocks list and gc's state under `mutable/` (byte for byte: sealed objects are
 *    bound to their logical names, which do not change).
 * 3. Replace the config with `"version": 2`: the commit (one atomic put).
 * 4. Delete the version 1 objects left behind. On a version 2 repository only this step runs.
 *
 * The caller opened `repo` at its current version; nothing else may write to it while this runs.
 */
export async function upgradeRepository(repo: Repository): Promise<UpgradeReport> {
  const t0 = performance.now();
  const raw = repo.storage;
  const report: UpgradeReport = {
    repository: raw.location,
    fromVersion: repo.format,
    version: 2,
    packs: 0,
    indexObjectsWritten: 0,
    indexObjectsRebuilt: 0,
    indexObjectsLost: [],
    mutableObjectsCopied: 0,
    leftoversRemoved: 0,
    durationMs: 0,
  };
  if (repo.format === 1 && repo.config.immutability && raw.protect && !raw.retain) {
    // Version 2 never lifts `protect`; without dates nothing protected could ever be deleted again.
    throw new FerryError(
      'REPO_FORMAT_UNSUPPORTED',
      `the repository at ${raw.location} is immutable and its backend protects objects but offers no retain-until dates (RepositoryBackend.retain): it stays at format 1`,
      { object: REPOSITORY_CONFIG_KEY },
    );
  }
  const lock = await RepositoryLock.acquire(repo.backend, { operation: 'upgrade', command: 'ferry repository upgrade' });
  let released = false;
  try {
    if (repo.format === 1) {
      await removeEarlierAttempt(raw);
      const packs = await readVersion1Index(repo, report);
      for (let i = 0; i < packs.length; i += PACKS_PER_OBJECT) {
        await writeIndexObjectV2(raw, packs.slice(i, i + PACKS_PER_OBJECT), repo.cipher);
        report.indexObjectsWritten++;
      }
      report.packs = packs.length;
      for (const prefix of V1_MUTABLE) {
        for (const k of await keys(raw, prefix)) {
          await raw.put(MUTABLE_PREFIX + k, await raw.get(k));
          report.mutableObjectsCopied++;
        }
      }
      if (repo.config.immutability) report.objectsRetained = await retainForVersion2(repo, repo.config.immutability.days);
      await lock.assertHeld();
      await commitVersion2(repo);
    }
    // Version 1 leftovers; the own lock (a version 1 key when this run committed) goes last.
    await lock.release();
    released = true;
    for (const prefix of V1_LEFTOVERS) {
      for (const k of await keys(raw, prefix)) {
        await raw.unprotect?.([k]);
        await raw.delete(k);
        report.leftoversRemoved++;
      }
    }
  } finally {
    if (!released) await lock.release();
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

/**
 * What a killed upgrade left under `indexes/` and `mutable/` (version 1 ignores both). The
 * filesystem backend's date records (`mutable/retention/`) stay, and so does an index object the
 * storage retains: a killed immutable upgrade retained it together with every pack, so none of the
 * packs it lists can have been deleted since.
 */
async function removeEarlierAttempt(raw: RepositoryBackend): Promise<void> {
  for (const prefix of [INDEXES_PREFIX, MUTABLE_PREFIX]) {
    for (const k of await keys(raw, prefix)) {
      if (k.startsWith(`${MUTABLE_PREFIX}retention/`)) continue;
      await raw.delete(k).catch((err) => {
        if (!isFerryError(err, 'REPO_IMMUTABLE')) throw err;
      });
    }
  }
}

/**
 * Every pack a version 1 index object or condemned copy lists, sorted by id. A condemned pack is
 * listed too: its copy, moved under `mutable/`, keeps it out of deduplication as in version 2.
 */
async function readVersion1Index(repo: Repository, report: UpgradeReport): Promise<(IndexedPack & { entries: PackEntry[] })[]> {
  const backend = repo.backend;
  const encrypted = Boolean(repo.cipher);
  const byId = new Map<string, IndexedPack & { entries: PackEntry[] }>();
  for (const prefix of ['index/', 'gc/condemned/']) {
    for (const key of await keys(backend, prefix)) {
      const id = packIdOf(key);
      if (byId.has(id)) continue;
      let entries: PackEntry[] | undefined;
      try {
        entries = decodeIndex(await backend.get(key), key).entries;
      } catch (err) {
        if (isFerryError(err) && !isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
        entries = await rebuild(repo, id);
        if (entries) report.indexObjectsRebuilt++;
        else report.indexObjectsLost.push(key);
      }
      if (entries) byId.set(id, { id, format: 1, size: packFileSize(entries, encrypted), entries });
    }
  }
  return [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : 1));
}

/** A damaged version 1 index object's entries, from its pack when the pack still hashes to its id. */
async function rebuild(repo: Repository, id: string): Promise<PackEntry[] | undefined> {
  try {
    const pack = await repo.storage.get(packKey(id));
    return sha256(pack).toString('hex') === id ? readPackTrailer(pack, packKey(id), repo.cipher) : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The commit: the config again at version 2 (the one replacement of a committed object the format
 * has). A version 1 config under immutability is protected by version 1's liftable protection: it is
 * lifted for the put and set again after.
 */
async function commitVersion2(repo: Repository): Promise<void> {
  const raw = repo.storage;
  const config = JSON.parse(Buffer.from(await raw.get(REPOSITORY_CONFIG_KEY)).toString('utf8')) as { version: number; id: string };
  if (config.id !== repo.id || config.version !== 1) {
    throw new FerryError('REPO_FORMAT_UNSUPPORTED', `the repository config changed during the upgrade (now version ${config.version})`, { object: REPOSITORY_CONFIG_KEY });
  }
  await raw.unprotect?.([REPOSITORY_CONFIG_KEY]);
  await raw.put(REPOSITORY_CONFIG_KEY, Buffer.from(JSON.stringify({ ...config, version: 2 }, null, 2) + '\n'));
  if (repo.config.immutability) await raw.protect?.([REPOSITORY_CONFIG_KEY]);
}

/**
 * Version 1 protection is lifted by the core before an allowed delete; version 2 never lifts
 * anything, the storage does once a date passes. So an immutable repository's protected objects
 * get dates before the commit: each point's manifest and maps its version 2 date (which may have
 * passed: the storage then lets them go), packs and the new index objects the latest of those.
 */
async function retainForVersion2(repo: Repository, days: number): Promise<number> {
  const raw = repo.storage;
  if (!raw.retain) return 0;
  const byPoint = new Map<string, string[]>();
  for (const k of await keys(raw, 'points/')) {
    const m = /^points\/[^/]+\/([^/]+?)(?:\.json|\/disk-\d+\.map)$/.exec(k);
    if (m) byPoint.set(m[1], [...(byPoint.get(m[1]) ?? []), k]);
  }
  let latest = 0;
  let n = 0;
  for (const [id, ks] of byPoint) {
    const until = pointRetainUntil(id, days);
    latest = Math.max(latest, until.getTime());
    await raw.retain(ks, until);
    n += ks.length;
  }
  const shared = [...(await keys(raw, 'packs/')), ...(await keys(raw, INDEXES_PREFIX))];
  if (latest > 0 && shared.length > 0) await raw.retain(shared, new Date(latest));
  return n + (latest > 0 ? shared.length : 0);
}

async function keys(backend: RepositoryBackend, prefix: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of backend.list(prefix)) out.push(k);
  return out;
}
