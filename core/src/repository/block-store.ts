import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError } from '../errors.js';
import type { BlockCodec } from '../pipe/block-codec.js';
import { decodeIndex, type PackEntry } from './pack.js';
import { PackWriter, packKey } from './pack-writer.js';

interface Location {
  pack: string;
  offset: number;
  length: number;
}

/** Something that measures how long the backend is busy storing (the session's `target write`). */
export interface WriteMeter {
  time<T>(op: () => Promise<T>): Promise<T>;
}

/**
 * The repository's blocks: where each stored block lives (loaded from the index objects on first
 * use), new blocks packed by a `PackWriter`, and reads of single blocks out of their packs.
 * Dedup is repository-wide: a hash that is stored, or reserved by this session, is not stored again.
 */
export class BlockStore {
  private index?: Map<string, Location>;
  private loading?: Promise<Map<string, Location>>;
  /** Reserved by this session and not yet in a stored pack. */
  private readonly pending = new Set<string>();
  private readonly writer: PackWriter;

  constructor(
    private readonly backend: RepositoryBackend,
    meter?: WriteMeter,
  ) {
    const put = (k: string, d: Uint8Array): Promise<void> => (meter ? meter.time(() => backend.put(k, d)) : backend.put(k, d));
    this.writer = new PackWriter(put, (id, entries) => this.stored(id, entries));
  }

  /** Loads every index object (once). */
  async load(): Promise<void> {
    if (this.index) return;
    this.loading ??= this.readIndex();
    this.index = await this.loading;
  }

  /** True when the block is stored or already reserved by this session. */
  async has(hash: Uint8Array): Promise<boolean> {
    await this.load();
    const hex = Buffer.from(hash).toString('hex');
    return this.index!.has(hex) || this.pending.has(hex);
  }

  /**
   * Claims a new block for this session: false when it is stored or claimed already (a duplicate).
   * Synchronous after `load`, so two sightings of one hash never both store it.
   */
  reserve(hash: Uint8Array): boolean {
    if (!this.index) throw new FerryError('INTERNAL', 'BlockStore.reserve before load');
    const hex = Buffer.from(hash).toString('hex');
    if (this.index.has(hex) || this.pending.has(hex)) return false;
    this.pending.add(hex);
    return true;
  }

  /** Adds a reserved block; it is durable once `flush` resolves. Waits when uploads are saturated. */
  add(hash: Buffer, encoded: Uint8Array): Promise<void> {
    return this.writer.add(hash, encoded);
  }

  flush(): Promise<void> {
    return this.writer.flush();
  }

  /** The encoded block object of `hash`, read out of its pack; `object` names it for errors. */
  async read(hash: Uint8Array, codec: BlockCodec): Promise<Buffer> {
    await this.load();
    const hex = Buffer.from(hash).toString('hex');
    const at = this.index!.get(hex);
    if (!at) throw new FerryError('REPO_OBJECT_NOT_FOUND', `block ${hex} is in no pack of the repository`, { object: `block ${hex}` });
    const key = packKey(at.pack);
    const object = `${key}@${at.offset} (block ${hex})`;
    const encoded = this.backend.getRange
      ? await this.backend.getRange(key, at.offset, at.length)
      : (await this.backend.get(key)).subarray(at.offset, at.offset + at.length);
    if (encoded.length !== at.length) throw new FerryError('REPO_CORRUPT_OBJECT', 'pack is shorter than its index says', { object });
    return codec.decode(encoded, hash, object);
  }

  private stored(packId: string, entries: PackEntry[]): void {
    for (const e of entries) {
      const hex = e.hash.toString('hex');
      this.index!.set(hex, { pack: packId, offset: e.offset, length: e.length });
      this.pending.delete(hex);
    }
  }

  private async readIndex(): Promise<Map<string, Location>> {
    const index = new Map<string, Location>();
    const keys: string[] = [];
    for await (const k of this.backend.list('index/')) keys.push(k);
    for (let i = 0; i < keys.length; i += 16) {
      const batch = await Promise.all(keys.slice(i, i + 16).map(async (k) => decodeIndex(await this.backend.get(k), k)));
      for (const { packId, entries } of batch) {
        for (const e of entries) index.set(e.hash.toString('hex'), { pack: packId, offset: e.offset, length: e.length });
      }
    }
    return index;
  }
}
