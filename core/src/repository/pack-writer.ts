import { encodeIndex, packParts, type PackEntry } from './pack.js';
import { joinAndHash } from './pack-hasher.js';
import type { RepositoryCipher } from './repository-cipher.js';

export const PACK_TARGET_SIZE = 16 * 1024 * 1024;

export function packKey(id: string): string {
  return `packs/${id.slice(0, 2)}/${id}`;
}

export function indexKey(packId: string): string {
  return `index/${packId.slice(0, 2)}/${packId}`;
}

/**
 * Where garbage collection keeps the index object of a pack it condemned: out of `index/`, so no
 * session deduplicates against the pack any more, but still readable, so reads can fall back to it
 * and gc can restore it (`docs/repository-format.md`, "Garbage collection").
 */
export function condemnedIndexKey(packId: string): string {
  return `gc/condemned/${packId.slice(0, 2)}/${packId}`;
}

/** The pack id at the end of a `packs/`, `index/` or `gc/condemned/` key. */
export function packIdOf(key: string): string {
  return key.slice(key.lastIndexOf('/') + 1);
}

/**
 * Collects new blocks into packs of about `targetSize` bytes. A full pack is stored, then its index
 * object, while the next one fills; at most `maxUploads` packs are in flight, so memory stays within
 * (maxUploads + 1) × targetSize. `flush` stores the partial pack and waits for everything.
 */
export class PackWriter {
  private current: { hash: Buffer; encoded: Uint8Array }[] = [];
  private currentSize = 0;
  private readonly uploads = new Set<Promise<void>>();
  private failure: unknown;

  constructor(
    /** The backend's atomic, durable put. */
    private readonly put: (key: string, data: Uint8Array) => Promise<void>,
    /** `bytes`: the size of the pack file. */
    private readonly onStored: (packId: string, entries: PackEntry[], bytes: number) => void,
    private readonly targetSize = PACK_TARGET_SIZE,
    private readonly maxUploads = 2,
    /** Encrypted repositories: the records added are sealed already; the trailer is sealed here. */
    private readonly cipher?: RepositoryCipher,
  ) {}

  /** Queues a block; resolves when it is buffered (it is durable only after the next `flush`). */
  async add(hash: Buffer, encoded: Uint8Array): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.current.length > 0 && this.currentSize + encoded.length > this.targetSize) await this.seal();
    this.current.push({ hash, encoded });
    this.currentSize += encoded.length;
  }

  async flush(): Promise<void> {
    if (this.current.length > 0) await this.seal();
    await Promise.all(this.uploads);
    if (this.failure) throw this.failure;
  }

  private async seal(): Promise<void> {
    const blocks = this.current;
    this.current = [];
    this.currentSize = 0;
    while (this.uploads.size >= this.maxUploads) await Promise.race(this.uploads);
    if (this.failure) throw this.failure;
    const p = this.store(blocks).catch((err) => {
      this.failure ??= err;
    });
    this.uploads.add(p);
    void p.finally(() => this.uploads.delete(p));
  }

  private async store(blocks: { hash: Buffer; encoded: Uint8Array }[]): Promise<void> {
    // The records move to the pack hashing thread: `blocks` is not used after this.
    const { parts, entries } = packParts(blocks, this.cipher);
    const { bytes, id } = await joinAndHash(parts);
    const pack = { id, bytes, entries };
    await this.put(packKey(pack.id), pack.bytes);
    await this.put(indexKey(pack.id), encodeIndex(pack.id, pack.entries));
    this.onStored(pack.id, pack.entries, pack.bytes.length);
  }
}
