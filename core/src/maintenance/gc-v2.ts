import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { isFerryError } from '../errors.js';
import { damageIndex, readDamagedBlocks } from '../repository/damaged-blocks.js';
import { decodeIndexV2, INDEXES_PREFIX, storedIndexObject, type IndexedPack } from '../repository/index-object-v2.js';
import { checkPack, encodeIndex, packFormat, type PackEntry } from '../repository/pack.js';
import { condemnedIndexKey, packIdOf } from '../repository/pack-writer.js';
import type { RepositoryCipher } from '../repository/repository-cipher.js';
import { RepositoryStorage } from '../repository/repository-storage.js';
import { readBatches } from './gc-protocol.js';
import type { PackInfo, PackState } from './gc-plan.js';

/**
 * Garbage collection of a format 2 repository (`docs/repository-format.md`, "Index objects, version
 * 2"). The condemn-then-sweep protocol is the one of format 1, with these differences:
 *
 * - A pack is live when a consolidated index object (`indexes/`) lists it and gc has no condemned
 *   copy of it. Condemning writes the copy (a format 1 index object of that pack, under
 *   `gc/condemned/`, i.e. `mutable/gc/condemned/`) and deletes nothing: the copy alone keeps
 *   sessions from deduplicating against the pack. Putting a pack back deletes the copy.
 * - The sweep deletes pack files only; then `compact` writes one index object listing every pack of
 *   the objects it read except the deleted ones, and only once that is durable deletes the objects
 *   it replaces and then the condemned copies of the deleted packs. A crash anywhere leaves copies
 *   that keep the deleted packs out of deduplication, and the next gc finishes.
 */
export interface IndexObjectsV2 {
  /** Index objects read, with the packs each lists. */
  objects: Map<string, string[]>;
  /** Every pack listed, condemned ones included. */
  listed: Map<string, PackInfo & { format: 1 | 2; retainUntil?: Date }>;
}

export async function loadPackStateV2(backend: RepositoryBackend): Promise<PackState & { v2: IndexObjectsV2 }> {
  const v2: IndexObjectsV2 = { objects: new Map(), listed: new Map() };
  const state = { live: new Map(), unreadable: [], condemned: new Set(), files: new Set(), batches: [], brokenBatches: [], v2 } as PackState & { v2: IndexObjectsV2 };
  for await (const k of backend.list('gc/condemned/')) state.condemned.add(packIdOf(k));
  const keys: string[] = [];
  for await (const k of backend.list(INDEXES_PREFIX)) keys.push(k);
  for (const key of keys) {
    let decoded;
    try {
      decoded = decodeIndexV2(await backend.get(key), key);
    } catch {
      // Its packs stay unknown: never deleted as orphans (they are not in `live`, so not condemned).
      state.unreadable.push(key);
      continue;
    }
    const entries: PackEntry[][] = decoded.packs.map(() => []);
    decoded.forEach((hash, pack, offset, length) => entries[pack].push({ hash: Buffer.from(hash), offset, length }));
    v2.objects.set(key, decoded.packs.map((p) => p.id));
    decoded.packs.forEach((p, i) => {
      if (v2.listed.has(p.id)) return; // listed by a merged object and by the ones it replaces
      v2.listed.set(p.id, { id: p.id, entries: entries[i], size: p.size, indexBytes: encodeIndex(p.id, entries[i]), format: p.format, retainUntil: p.retainUntil });
    });
  }
  for (const [id, info] of v2.listed) if (!state.condemned.has(id)) state.live.set(id, info);
  for await (const k of backend.list('packs/')) state.files.add(packIdOf(k));
  if (state.unreadable.length > 0) {
    // Packs an unreadable index object may list must not look like orphans: keep every unlisted file.
    for (const id of state.files) if (!v2.listed.has(id) && !state.condemned.has(id)) state.unreadable.push(id);
  }
  const { readable, broken } = await readBatches(backend);
  state.batches = readable;
  state.brokenBatches = broken;
  return state;
}

/** Writes one format 2 index object for `packs` (create-only); returns its key. */
export async function writeIndexObjectV2(
  backend: RepositoryBackend,
  packs: (IndexedPack & { entries: PackEntry[] })[],
  cipher?: RepositoryCipher,
): Promise<string | undefined> {
  if (packs.length === 0) return undefined;
  const { key, stored } = storedIndexObject(packs, cipher && ((n, d) => cipher.sealObject(n, d)));
  if (backend instanceof RepositoryStorage) await backend.putStoredIfAbsent(key, stored);
  else await backend.putIfAbsent(key, stored);
  return key;
}

/**
 * After a sweep: merges the index objects gc read into one, leaving out the packs the sweep deleted,
 * then deletes the merged objects and the deleted packs' condemned copies, in that order. Runs when
 * something was deleted or more than 64 index objects are listed. Returns how many objects it merged.
 */
export async function compact(
  backend: RepositoryBackend,
  v2: IndexObjectsV2,
  deleted: Set<string>,
  cipher?: RepositoryCipher,
  /** A key's retain-until date when it has not passed (immutability): such objects are not deleted. */
  retainedUntil: (key: string) => Date | undefined = () => undefined,
): Promise<number> {
  if (deleted.size === 0 && v2.objects.size <= 64) return 0;
  const keep = [...v2.listed.values()].filter((p) => !deleted.has(p.id));
  const merged = await writeIndexObjectV2(backend, keep, cipher);
  let removed = 0;
  let kept = false;
  for (const key of v2.objects.keys()) {
    if (key === merged) continue;
    if (retainedUntil(key)) {
      kept = true;
      continue;
    }
    try {
      await backend.delete(key);
      removed++;
    } catch (err) {
      if (!isFerryError(err, 'REPO_IMMUTABLE')) throw err;
      kept = true; // the storage holds a date the core did not know
    }
  }
  // An index object that stays may list deleted packs: their copies keep them out of deduplication
  // until a later gc merges again.
  if (!kept) for (const id of deleted) await backend.delete(condemnedIndexKey(id));
  return removed;
}

/**
 * Hashes with a good live copy now (format 2): listed by an index object (read by gc, or written
 * since), not condemned, its pack file present and the copy not on the damaged-blocks list.
 */
export async function liveHashesV2(backend: RepositoryBackend, v2: IndexObjectsV2): Promise<Set<string>> {
  const condemned = new Set<string>();
  for await (const k of backend.list('gc/condemned/')) condemned.add(packIdOf(k));
  const files = new Set<string>();
  for await (const k of backend.list('packs/')) files.add(packIdOf(k));
  const damaged = damageIndex(await readDamagedBlocks(backend));
  const out = new Set<string>();
  const add = (id: string, hex: string): void => {
    if (files.has(id) && !condemned.has(id) && !damaged.get(hex)?.has(id)) out.add(hex);
  };
  for (const p of v2.listed.values()) for (const e of p.entries) add(p.id, e.hash.toString('hex'));
  for await (const key of backend.list(INDEXES_PREFIX)) {
    if (v2.objects.has(key)) continue;
    const decoded = decodeIndexV2(await backend.get(key), key);
    decoded.forEach((hash, pack) => add(decoded.packs[pack].id, Buffer.from(hash).toString('hex')));
  }
  return out;
}

/**
 * Format 2 index rebuild (`ferry verify`, when an index object is damaged): every pack file that no
 * readable index object lists and gc has not condemned is checked whole (`checkPack`: its id from
 * header and tail, every block object's CRC-32) and listed by one new index object. Packs that fail
 * are left out (their blocks stay missing). Returns the new object's key, the packs it lists and
 * the packs that failed.
 */
export async function reindexUnlistedPacks(
  backend: RepositoryBackend,
  cipher?: RepositoryCipher,
  /**
   * The damaged index objects. The rebuilt object may have the very name of one of them (the same
   * packs, hence the same bytes): its damaged bytes are then replaced by the bytes its name is the
   * hash of, a repair rather than a replacement.
   */
  damaged: ReadonlySet<string> = new Set(),
): Promise<{ key?: string; packs: string[]; failed: { pack: string; why: string }[] }> {
  const listed = new Set<string>();
  for await (const key of backend.list(INDEXES_PREFIX)) {
    try {
      for (const p of decodeIndexV2(await backend.get(key), key).packs) listed.add(p.id);
    } catch (err) {
      if (isFerryError(err) && !isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
    }
  }
  for await (const k of backend.list('gc/condemned/')) listed.add(packIdOf(k));
  const packs: (IndexedPack & { entries: PackEntry[] })[] = [];
  const failed: { pack: string; why: string }[] = [];
  for await (const key of backend.list('packs/')) {
    const id = packIdOf(key);
    if (listed.has(id)) continue;
    try {
      const bytes = await backend.get(key);
      const entries = checkPack(bytes, id, key, cipher);
      packs.push({ id, format: packFormat(bytes)!, size: bytes.length, entries });
    } catch (err) {
      if (isFerryError(err) && !isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
      failed.push({ pack: id, why: (err as Error).message });
    }
  }
  if (packs.length === 0) return { packs: [], failed };
  const { key, stored } = storedIndexObject(packs, cipher && ((n, d) => cipher.sealObject(n, d)));
  const raw = backend instanceof RepositoryStorage ? backend.raw : backend;
  if (!(await raw.putIfAbsent(key, stored)) && damaged.has(key)) await raw.put(key, stored);
  return { key, packs: packs.map((p) => p.id), failed };
}
