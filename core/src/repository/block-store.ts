import type { ObjectWriter, RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import type { BlockCodec, BlockSlot } from './block-codec.js';
import { BlockIndex } from './block-index.js';
import { damageIndex, readDamagedBlocks, type DamageIndex } from './damaged-blocks.js';
import { createHash } from 'node:crypto';
import { sha256 } from '../util/checksums.js';
import { indexEntries, readPackTrailer, type IndexEntries, type PackEntry } from './pack.js';
import { PackWriter, packIdOf, packKey, STREAMED_UPLOADS } from './pack-writer.js';
import type { RepositoryCipher } from './repository-cipher.js';
import { RepositoryStorage } from './repository-storage.js';
import { listDigest, type IndexCache } from './index-cache.js';
import { decodeIndexV2, INDEXES_PREFIX, storedIndexObject, type IndexedPack } from './index-object-v2.js';

export interface BlockLocation {
  pack: string;
  offset: number;
  length: number;
}

/** Something that measures how long the backend is busy storing (the session's `target write`). */
export interface WriteMeter {
  time<T>(op: () => Promise<T>): Promise<T>;
}

/** Format 2: a session writes a consolidated index object at least every this many packs. */
export const PACKS_PER_INDEX_OBJECT = 256;

interface IndexState {
  /** From `index/`: what sessions deduplicate against. An undamaged copy wins over a damaged one. */
  live: BlockIndex;
  /** From `gc/condemned/`: packs gc is about to delete; read from only when no live copy exists. */
  condemned: BlockIndex;
  damaged: DamageIndex;
}

/**
 * The repository's blocks: where each stored block lives (loaded from the index objects on first
 * use), new blocks packed by a `PackWriter`, and reads of single blocks out of their packs.
 * Dedup is repository-wide: a hash that is stored, or reserved by this session, is not stored again.
 *
 * Self-heal: a hash whose every indexed copy is on the damaged-blocks list counts as not stored, so
 * `reserve` lets the session store a fresh copy (`healed` counts them), and reads prefer that copy.
 * Packs condemned by garbage collection are never deduplicated against (that is what makes gc safe
 * while backups run), but reads fall back to them, so a point committed by a session that started
 * before gc condemned a pack restores until gc puts the pack's index back.
 */
export class BlockStore {
  private state?: IndexState;
  private loading?: Promise<IndexState>;
  /** Reserved by this session and not yet in a stored pack. */
  private readonly pending = new Set<string>();
  private readonly writer: PackWriter;
  /** Create-only put of an object as stored (already sealed): format 2 index objects. */
  private readonly timedPutStored: (key: string, stored: Uint8Array) => Promise<boolean>;
  /** Records being sealed (thread pool) on their way into the writer: `flush` waits for them. */
  private readonly sealing = new Set<Promise<Buffer>>();
  /** Blocks stored again because every stored copy was known damaged. */
  healed = 0;
  /** Whether `load` may use the local index cache (a health check reads every index object). */
  useCache = true;
  /** Index objects read from the repository (not the cache) by `load`. */
  indexReads = 0;
  /** Format 2: index objects listed when the index was loaded, and the ones this process wrote since. */
  readonly indexObjectKeys: string[] = [];
  /** Format 2: packs stored by this session and not yet in an index object. */
  private unindexed: (IndexedPack & { entries: PackEntry[] })[] = [];
  private indexing: Promise<void> = Promise.resolve();
  /**
   * Index objects that failed their checks. When the pack's own trailer is intact (the pack still
   * hashes to its id) the index was rebuilt from it in memory: `rebuilt` holds the entries, so a
   * health check can put a repaired index object back.
   */
  readonly badIndexes: { key: string; packId: string; detail: string; rebuilt?: PackEntry[] }[] = [];

  constructor(
    private readonly backend: RepositoryBackend,
    meter?: WriteMeter,
    /** Encrypted repositories: block records are sealed on `add` and opened on `read`. */
    readonly cipher?: RepositoryCipher,
    /**
     * The local index cache: index objects are read from it when their key is listed, and the ones
     * read or written here are added to it. `useCache = false` (a health check) reads the repository.
     */
    private readonly cache?: IndexCache,
    /**
     * Repository format. 2: packs with ids over header and tail, no per-pack index objects, a
     * consolidated index object (`indexes/`) per `PACKS_PER_INDEX_OBJECT` packs and at every
     * `flush`; opening lists `indexes/` and `gc/condemned/` only (never `packs/`).
     */
    readonly format: 1 | 2 = 1,
  ) {
    if (cache && backend instanceof RepositoryStorage) {
      backend.onIndexWritten = (key, stored) => {
        if (this.useCache && (key.startsWith('index/') || key.startsWith(INDEXES_PREFIX))) return cache.write(key, stored);
      };
    }
    const put = (k: string, d: Uint8Array): Promise<boolean> => (meter ? meter.time(() => backend.putIfAbsent(k, d)) : backend.putIfAbsent(k, d));
    this.timedPutStored = (k, d) => {
      const op = (): Promise<boolean> => (backend instanceof RepositoryStorage ? backend.putStoredIfAbsent(k, d) : backend.putIfAbsent(k, d));
      return meter ? meter.time(op) : op();
    };
    // A backend that writes objects as they are produced gets each record straight from the
    // caller's memory (`PackWriter`); its writes and commits count as `target write` like a put.
    const timed = <T>(op: () => Promise<T>): Promise<T> => (meter ? meter.time(op) : op());
    const begin =
      backend instanceof RepositoryStorage && backend.streamsObjects
        ? async (): Promise<ObjectWriter> => {
            const w = await timed(() => backend.beginObject());
            return {
              write: (data, offset) => timed(() => w.write(data, offset)),
              commitIfAbsent: (key) => timed(() => w.commitIfAbsent(key)),
              abort: () => w.abort(),
            };
          }
        : undefined;
    this.writer = new PackWriter(
      put,
      (id, entries, bytes) => this.stored(id, entries, bytes),
      undefined,
      begin ? STREAMED_UPLOADS : undefined,
      cipher,
      { pack: format, indexObjects: format === 1 },
      begin,
    );
  }

  /** Bytes the loaded index holds in its typed arrays (0 before `load`). */
  get indexBytes(): number {
    return this.state ? this.state.live.bytes + this.state.condemned.bytes : 0;
  }

  /** Loads every index object, the condemned ones and the damaged-blocks list (once). */
  async load(): Promise<void> {
    if (this.state) return;
    this.loading ??= this.readState();
    this.state = await this.loading;
  }

  /**
   * Forgets the loaded index, so the next `load` reads it again (verify, after it wrote a rebuilt
   * index object). Only between sessions: nothing may be reserved or pending.
   */
  unload(): void {
    if (this.pending.size > 0 || this.unindexed.length > 0) throw new FerryError('INTERNAL', 'BlockStore.unload with blocks in flight');
    this.state = undefined;
    this.loading = undefined;
    this.badIndexes.length = 0;
    this.indexObjectKeys.length = 0;
  }

  /** True when an undamaged copy is stored or the block is already reserved by this session. */
  async has(hash: Uint8Array): Promise<boolean> {
    await this.load();
    if (this.hasGoodCopy(hash)) return true;
    return this.pending.size > 0 && this.pending.has(Buffer.from(hash).toString('hex'));
  }

  /**
   * Claims a new block for this session: false when it is stored or claimed already (a duplicate).
   * Synchronous after `load`, so two sightings of one hash never both store it.
   */
  reserve(hash: Uint8Array): boolean {
    if (!this.state) throw new FerryError('INTERNAL', 'BlockStore.reserve before load');
    if (this.hasGoodCopy(hash)) return false;
    const hex = Buffer.from(hash).toString('hex');
    if (this.pending.has(hex)) return false;
    // Counted as healed only when a listed copy (or one in a missing pack) is what the repository
    // would otherwise use.
    const listed = this.state.damaged.get(hex);
    if (this.state.live.packOf(hash) >= 0 || listed?.has('')) this.healed++;
    this.pending.add(hex);
    return true;
  }

  /** True when no undamaged indexed copy exists: a backup must read this block again (self-heal). */
  needsHeal(hash: Uint8Array): boolean {
    if (!this.state) throw new FerryError('INTERNAL', 'BlockStore.needsHeal before load');
    return !this.hasGoodCopy(hash) && !(this.pending.size > 0 && this.pending.has(Buffer.from(hash).toString('hex')));
  }

  /** Where a read of `hash` goes: the preferred live copy, else a condemned pack's copy. */
  locate(hash: Uint8Array | string): BlockLocation | undefined {
    if (!this.state) throw new FerryError('INTERNAL', 'BlockStore.locate before load');
    const bin = typeof hash === 'string' ? Buffer.from(hash, 'hex') : hash;
    return this.state.live.get(bin) ?? this.state.condemned.get(bin);
  }

  /** Whether the damaged-blocks list names this copy of the block, or its pack file is missing. */
  isKnownDamaged(hex: string, pack: string | null): boolean {
    if (!this.state) return false;
    if (pack !== null && this.state.live.isPackGone(pack)) return true;
    return this.state.damaged.get(hex)?.has(pack ?? '') ?? false;
  }

  /**
   * Adds a reserved block; it is durable once `flush` resolves. Waits when uploads are saturated.
   * `encoded` is copied into the pack (or sealed into a new record) before this resolves: the caller
   * may reuse its memory afterwards, not before. In an encrypted repository the block object is
   * sealed here, bound to its id.
   */
  async add(hash: Buffer, encoded: Uint8Array): Promise<void> {
    if (!this.cipher) return this.writer.add(hash, encoded);
    const sealed = this.cipher.sealBlockAsync(hash, encoded);
    this.sealing.add(sealed);
    try {
      await sealed;
    } finally {
      this.sealing.delete(sealed);
    }
    return this.writer.add(hash, await sealed);
  }

  /**
   * Makes every block reserved so far durable. With several disks in flight (`parallelDisks`) a
   * block another disk reserved may still be on its way into the writer (its `add` waiting for an
   * upload slot) when one VM commits, and that VM's map may already name it (dedup against the
   * session's reservations): so flush again until every block reserved before this call is stored.
   * Each round stores what was queued, so the rounds end (bounded as a guard).
   */
  async flush(): Promise<void> {
    const reserved = [...this.pending];
    for (let round = 0; ; round++) {
      await Promise.allSettled([...this.sealing]);
      await this.writer.flush();
      if (!reserved.some((hex) => this.pending.has(hex))) {
        this.writeIndexObject();
        return this.indexing;
      }
      if (round >= 1000) throw new FerryError('INTERNAL', `${reserved.filter((h) => this.pending.has(h)).length} reserved block(s) never reached a pack`);
      await new Promise((r) => setImmediate(r));
    }
  }

  /**
   * The raw block of `hash`, read out of its pack and checked; `object` names it for errors. With a
   * `slot` (and a codec that has them) it is decoded into `slot.raw` and the result is a view of it;
   * in a repository without encryption whose backend reads into buffers, the stored block object is
   * read into `slot.out` first, so a block costs no new memory.
   */
  async read(hash: Uint8Array, codec: BlockCodec, slot?: BlockSlot): Promise<Buffer> {
    if (slot && !this.cipher && codec.readDecodeSlot && this.backend.localFile) {
      // A pack that is a local file: the thread that decodes the block reads it too.
      const { key, at, object } = await this.place(hash);
      const file = this.backend.localFile(key);
      if (file !== undefined && at.length <= slot.out.length) {
        const range = { file, key, offset: at.offset, length: at.length };
        const n = await codec.readDecodeSlot(range, hash, object, slot).catch((err) => {
          throw namedBlock(err, object);
        });
        return slot.raw.subarray(0, n);
      }
    }
    if (slot && !this.cipher && this.backend.getRangeInto) {
      const { key, at, object } = await this.place(hash);
      if (at.length <= slot.out.length) {
        const encoded = slot.out.subarray(0, at.length);
        await this.backend.getRangeInto(key, at.offset, encoded).catch((err) => {
          throw namedBlock(err, object);
        });
        return slot.raw.subarray(0, await codec.decodeSlot(encoded, hash, object, slot));
      }
    }
    const { record, object } = await this.readRecord(hash);
    if (slot) return slot.raw.subarray(0, await codec.decodeSlot(record, hash, object, slot));
    return codec.decode(record, hash, object);
  }

  /**
   * The block object of `hash` as stored (opened in an encrypted repository), not yet checked or
   * decoded, and its name for errors: for a repository service that streams it to a client that
   * checks and decodes it.
   */
  async readRecord(hash: Uint8Array): Promise<{ record: Uint8Array; object: string }> {
    const { key, at, object } = await this.place(hash);
    const encoded = await (this.backend.getRange
      ? this.backend.getRange(key, at.offset, at.length)
      : this.backend.get(key).then((all) => all.subarray(at.offset, at.offset + at.length))
    ).catch((err) => {
      throw namedBlock(err, object);
    });
    if (encoded.length !== at.length) throw new FerryError('REPO_CORRUPT_OBJECT', 'pack is shorter than its index says', { object });
    return { record: this.cipher ? await this.cipher.openBlockAsync(hash, encoded, object) : encoded, object };
  }

  /** Where the block of `hash` is read from, and its name for errors. */
  private async place(hash: Uint8Array): Promise<{ key: string; at: BlockLocation; object: string }> {
    await this.load();
    const hex = Buffer.from(hash).toString('hex');
    const at = this.locate(hex);
    if (!at) throw new FerryError('REPO_OBJECT_NOT_FOUND', `block ${hex} is in no pack of the repository`, { object: `block ${hex}` });
    const key = packKey(at.pack);
    return { key, at, object: `${key}@${at.offset} (block ${hex})` };
  }

  private hasGoodCopy(hash: Uint8Array): boolean {
    const { live, damaged } = this.state!;
    const pack = live.packOf(hash);
    if (pack < 0 || live.isGone(pack)) return false;
    return damaged.size === 0 || !damaged.get(Buffer.from(hash).toString('hex'))?.has(live.packId(pack));
  }

  /**
   * A pack just stored: its copies are indexed as the last word (a pack stored again replaces no
   * earlier copy unless that one is known damaged, the rule of `readIndexes`).
   */
  private stored(packId: string, entries: PackEntry[], bytes: number): void {
    const live = this.state!.live;
    const n = live.packNumber(packId);
    for (const e of entries) {
      live.add(e.hash, n, e.offset, e.length);
      this.pending.delete(e.hash.toString('hex'));
    }
    if (this.format === 1) return;
    this.unindexed.push({ id: packId, format: 2, size: bytes, entries });
    if (this.unindexed.length >= PACKS_PER_INDEX_OBJECT) this.writeIndexObject();
  }

  /**
   * Format 2: queues one consolidated index object for the packs stored since the last one. Its name
   * is the SHA-256 of its bytes as stored (sealed in an encrypted repository, bound to `index`), so
   * a cached copy is checked without the key. `flush` waits for it (a failure surfaces there).
   */
  private writeIndexObject(): void {
    const packs = this.unindexed.splice(0);
    if (packs.length === 0) return;
    this.indexing = this.indexing.then(async () => {
      const { key, stored } = storedIndexObject(packs, this.cipher && ((n, d) => this.cipher!.sealObject(n, d)));
      await this.timedPutStored(key, stored);
      this.indexObjectKeys.push(key);
    });
  }

  /**
   * Index objects are listed before pack files: a session puts a pack before its index object, so
   * every pack whose index we list is in the later pack listing unless it is really gone. A copy in a
   * pack that is gone counts as damaged (a dangling index object must never be deduplicated against).
   */
  private async readState(): Promise<IndexState> {
    const damaged = damageIndex(await readDamagedBlocks(this.backend));
    if (this.format === 2) return this.readStateV2(damaged);
    const liveKeys = await this.keys('index/');
    const condemnedKeys = await this.keys('gc/condemned/');
    const files = new Set((await this.keys('packs/')).map(packIdOf));
    const gone = liveKeys.filter((k) => !files.has(packIdOf(k)));
    const live = await this.loadLive(liveKeys, damaged, gone.map(packIdOf), (keys, index) => this.readIndexes(keys, damaged, files, index));
    const condemned = await this.readIndexes(condemnedKeys, damaged, files);
    if (this.cache && this.useCache) await this.cache.retainOnly('gc', new Set(condemnedKeys));
    return { live, condemned, damaged };
  }

  /**
   * Format 2: `indexes/` and `gc/condemned/` only. Packs gc condemned are never deduplicated
   * against (they count as gone in the live index) but stay readable; a pack whose file is missing
   * is found when a block is read from it, not by listing `packs/`.
   */
  private async readStateV2(damaged: DamageIndex): Promise<IndexState> {
    // gc merges index objects and sweeps condemned copies while sessions open: an object listed a
    // moment ago may be gone by its GET. Its content is then in an object written before the delete,
    // so listing again finds it (bounded: a gc per attempt is already unlikely).
    for (let attempt = 1; ; attempt++) {
      const bad = this.badIndexes.length;
      try {
        return await this.readStateV2Once(damaged);
      } catch (err) {
        const gone = isFerryError(err, 'REPO_OBJECT_NOT_FOUND') && /^(mutable\/)?(indexes\/|gc\/condemned\/)/.test(err.where.object ?? '');
        if (!gone || attempt >= 3) throw err;
        this.indexObjectKeys.length = 0;
        this.badIndexes.length = bad;
      }
    }
  }

  private async readStateV2Once(damaged: DamageIndex): Promise<IndexState> {
    const keys = await this.keys(INDEXES_PREFIX);
    this.indexObjectKeys.push(...keys);
    const condemnedKeys = await this.keys('gc/condemned/');
    const condemnedIds = condemnedKeys.map(packIdOf).sort();
    const condemned = await this.readIndexes(condemnedKeys, damaged, new Set(condemnedIds));
    const live = await this.loadLive(keys, damaged, condemnedIds, (k, index) => this.readIndexObjects(k, index));
    for (const id of condemnedIds) live.markGone(live.packNumber(id));
    if (this.cache && this.useCache) await this.cache.retainOnly('gc', new Set(condemnedKeys));
    return { live, condemned, damaged };
  }

  /** Format 2 index objects into `index`; a damaged one is skipped (its blocks count as not stored). */
  private async readIndexObjects(keys: string[], index: BlockIndex): Promise<BlockIndex> {
    for (let i = 0; i < keys.length; i += 16) {
      const batch = await Promise.all(
        keys.slice(i, i + 16).map(async (key) => {
          try {
            return decodeIndexV2(await this.getIndexObject(key), key);
          } catch (err) {
            if (!(err instanceof FerryError) || err.code !== 'REPO_CORRUPT_OBJECT') throw err;
            this.badIndexes.push({ key, packId: '', detail: err.message });
            return undefined;
          }
        }),
      );
      for (const decoded of batch) {
        if (!decoded) continue;
        const numbers = decoded.packs.map((p) => index.packNumber(p.id));
        decoded.forEach((hash, pack, offset, length) => index.stage(hash, numbers[pack], offset, length));
      }
    }
    index.finishLoad();
    return index;
  }

  /**
   * The live index: from the cache's snapshot when it was built from a subset of the listed index
   * objects under the same damage and missing packs (only the new objects are read and merged),
   * else from every index object (each from the cache when it has it). A changed index is
   * snapshotted again.
   */
  private async loadLive(
    keys: string[],
    damaged: DamageIndex,
    /** Pack ids whose copies are not good ones (missing files; format 2: condemned), sorted. */
    goneIds: string[],
    read: (keys: string[], into: BlockIndex) => Promise<BlockIndex>,
  ): Promise<BlockIndex> {
    const cache = this.useCache ? this.cache : undefined;
    if (!cache) return read(keys, BlockStore.newIndex(damaged));
    const gone = new Set(goneIds);
    const digest = stateDigest(damaged, goneIds);
    const snap = this.cipher ? undefined : await cache.readSnapshot();
    if (snap && snap.digest === digest.state) {
      // Usually the listing is the one the snapshot was made from; else it must cover the snapshot's.
      const same = snap.listDigest === listDigest(keys);
      const listed = same ? undefined : new Set(keys);
      const had = same ? [] : snap.keys();
      if (same || had.every((k) => listed!.has(k))) {
        const index = BlockStore.newIndex(damaged);
        index.importRun(snap.run, snap.prefix, snap.packs);
        for (const id of snap.packs) if (gone.has(id)) index.markGone(index.packNumber(id));
        if (same) return index;
        const hadSet = new Set(had);
        const fresh = keys.filter((k) => !hadSet.has(k));
        await cache.forget(had.filter((k) => !listed!.has(k)));
        await read(fresh, index);
        if (fresh.length > 0 || had.length !== keys.length) await this.snapshot(index, keys, digest.state);
        return index;
      }
    }
    const index = await read(keys, BlockStore.newIndex(damaged));
    await this.snapshot(index, keys, digest.state);
    await cache.retainOnly(this.format === 2 ? 'indexes' : 'index', new Set(keys));
    return index;
  }

  private async snapshot(index: BlockIndex, keys: string[], digest: string): Promise<void> {
    // Rare overflowed entries, and encrypted repositories (the snapshot is plaintext: block ids and
    // their places must stay as secret as the sealed index objects): rebuilt from cached objects.
    if (index.overflowCount > 0 || this.cipher) return;
    const { run, prefix, packs } = index.exportRun();
    await this.cache!.writeSnapshot({ keys: () => keys, listDigest: listDigest(keys), digest, packs, prefix, run });
  }

  /** A new empty index: a copy known damaged (or in a missing pack) gives way to one that is not. */
  private static newIndex(damaged: DamageIndex): BlockIndex {
    const index: BlockIndex = new BlockIndex((hash, kept, cand) => {
      const bad = (n: number): boolean => index.isGone(n) || (damaged.size > 0 && (damaged.get(Buffer.from(hash).toString('hex'))?.has(index.packId(n)) ?? false));
      return bad(kept) && !bad(cand);
    });
    return index;
  }

  /** One index object; a damaged one is rebuilt from its pack when the pack is intact, else skipped. */
  private async readIndex(key: string): Promise<IndexEntries> {
    try {
      return indexEntries(await this.getIndexObject(key), key);
    } catch (err) {
      if (!(err instanceof FerryError) || err.code !== 'REPO_CORRUPT_OBJECT') throw err;
      const packId = packIdOf(key);
      const bad: BlockStore['badIndexes'][number] = { key, packId, detail: err.message };
      this.badIndexes.push(bad);
      try {
        const pack = await this.backend.get(packKey(packId));
        if (sha256(pack).toString('hex') === packId) bad.rebuilt = readPackTrailer(pack, packKey(packId), this.cipher);
      } catch {
        // the pack is damaged or gone too: its blocks count as not stored
      }
      const rebuilt = bad.rebuilt ?? [];
      return { packId, count: rebuilt.length, forEach: (fn) => rebuilt.forEach((e) => fn(e.hash, e.offset, e.length)) };
    }
  }

  /** An index object's plaintext: from the cache when it holds it, else read (and then cached). */
  private async getIndexObject(key: string): Promise<Uint8Array> {
    const storage = this.backend instanceof RepositoryStorage ? this.backend : undefined;
    const cache = this.useCache && storage ? this.cache : undefined;
    if (!cache) {
      this.indexReads++;
      if (!key.startsWith(INDEXES_PREFIX) || !storage) return this.backend.get(key);
      const stored = await storage.getStored(key);
      if (!contentMatches(key, stored)) throw new FerryError('REPO_CORRUPT_OBJECT', 'index object does not hash to its name', { object: key });
      return storage.openStored(key, stored);
    }
    const cached = await cache.read(key);
    if (cached && contentMatches(key, cached)) {
      try {
        return storage!.openStored(key, cached);
      } catch {
        // sealed under another key, or damaged despite its hash: read the repository's copy
      }
    }
    this.indexReads++;
    const stored = await storage!.getStored(key);
    if (!contentMatches(key, stored)) throw new FerryError('REPO_CORRUPT_OBJECT', 'index object does not hash to its name', { object: key });
    const plain = storage!.openStored(key, stored);
    if (key.startsWith(INDEXES_PREFIX)) decodeIndexV2(plain, key);
    else indexEntries(plain, key); // only a good object is cached
    await cache.write(key, stored);
    return plain;
  }

  private async keys(prefix: string): Promise<string[]> {
    const out: string[] = [];
    for await (const k of this.backend.list(prefix)) out.push(k);
    return out;
  }

  private async readIndexes(keys: string[], damaged: DamageIndex, files: Set<string>, into?: BlockIndex): Promise<BlockIndex> {
    const index = into ?? BlockStore.newIndex(damaged);
    for (let i = 0; i < keys.length; i += 16) {
      const batch = await Promise.all(keys.slice(i, i + 16).map((k) => this.readIndex(k)));
      for (const entries of batch) {
        const n = index.packNumber(entries.packId);
        if (!files.has(entries.packId)) index.markGone(n);
        entries.forEach((hash, offset, length) => index.stage(hash, n, offset, length));
      }
    }
    index.finishLoad();
    return index;
  }
}

/**
 * What decided which copy of a block the index keeps besides the index objects themselves: the
 * damaged-blocks list and which listed packs are missing. A snapshot built under another state is
 * rebuilt (from cached objects) rather than reused.
 */
function stateDigest(damaged: DamageIndex, goneIds: string[]): { state: string } {
  const h = createHash('sha256');
  for (const [hex, packs] of [...damaged].sort((a, b) => (a[0] < b[0] ? -1 : 1))) h.update(`${hex}:${[...packs].sort().join(',')}\n`);
  h.update('gone\n');
  for (const id of goneIds) h.update(`${id}\n`);
  return { state: h.digest('hex') };
}

/** Format 2 index objects are named by the SHA-256 of their stored bytes; format 1 ones are not. */
function contentMatches(key: string, stored: Uint8Array): boolean {
  return !key.startsWith(INDEXES_PREFIX) || sha256(stored).toString('hex') === key.slice(INDEXES_PREFIX.length);
}

/** A backend's error with the block named, not only its pack: what verify and the self-heal talk about. */
function namedBlock(err: unknown, object: string): unknown {
  return err instanceof FerryError ? new FerryError(err.code, err.detail, { ...err.where, object }, { cause: err }) : err;
}
