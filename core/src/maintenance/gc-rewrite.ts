import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { parseBlock } from '../repository/block-object.js';
import { PackWriter, packKey } from '../repository/pack-writer.js';
import type { PackEntry } from '../repository/pack.js';
import { checkSealedBlock, type RepositoryCipher } from '../repository/repository-cipher.js';
import type { PackInfo } from './gc-plan.js';
import type { IndexedPack } from '../repository/index-object-v2.js';
import { writeIndexObjectV2 } from './gc-v2.js';

export interface RewriteResult {
  /** Old packs whose used blocks now live in new packs (they can be condemned). */
  done: PackInfo[];
  /** Old packs left as they are, and why (a block failed its CRC-32, the pack could not be read). */
  skipped: { pack: string; why: string }[];
  /** Bytes of the new packs. */
  bytesWritten: number;
}

/**
 * Moves the used blocks of partly used packs into new packs, byte for byte (no recompression), each
 * checked by its CRC-32 first: a damaged block is never copied, since the copy would carry the damage
 * under a new, unlisted location. Returns once the new packs and their index objects are durable,
 * so the old packs may then be condemned.
 */
export async function rewritePacks(
  backend: RepositoryBackend,
  items: { pack: PackInfo; keep: PackEntry[] }[],
  cipher?: RepositoryCipher,
  /** Format 2: version 2 packs, indexed by one consolidated index object once all are stored. */
  format: 1 | 2 = 1,
): Promise<RewriteResult> {
  const result: RewriteResult = { done: [], skipped: [], bytesWritten: 0 };
  const written: (IndexedPack & { entries: PackEntry[] })[] = [];
  const writer = new PackWriter(
    (k, d) => backend.putIfAbsent(k, d),
    (id, entries, bytes) => {
      result.bytesWritten += bytes;
      if (format === 2) written.push({ id, format: 2, size: bytes, entries });
    },
    undefined,
    undefined,
    cipher,
    { pack: format, indexObjects: format === 1 },
  );
  for (const { pack, keep } of items) {
    const blocks = await readUsed(backend, pack, keep, Boolean(cipher)).catch((err: Error) => err);
    if (blocks instanceof Error) {
      result.skipped.push({ pack: pack.id, why: blocks.message });
      continue;
    }
    for (const b of blocks) await writer.add(b.hash, b.encoded);
    result.done.push(pack);
  }
  await writer.flush();
  await writeIndexObjectV2(backend, written, cipher);
  return result;
}

/** Sealed records (encrypted repositories) are copied as they are: their CRC-32 covers the ciphertext. */
async function readUsed(backend: RepositoryBackend, pack: PackInfo, keep: PackEntry[], sealed: boolean): Promise<{ hash: Buffer; encoded: Buffer }[]> {
  const key = packKey(pack.id);
  const bytes = Buffer.from(await backend.get(key));
  return keep.map((e) => {
    const object = `${key}@${e.offset}`;
    const encoded = bytes.subarray(e.offset, e.offset + e.length);
    if (encoded.length !== e.length) throw new Error(`${object} is cut short`);
    if (sealed) checkSealedBlock(encoded, object);
    else parseBlock(encoded, object); // throws REPO_CORRUPT_OBJECT naming the object
    return { hash: e.hash, encoded: Buffer.from(encoded) };
  });
}
