import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { isFerryError } from '../errors.js';

/**
 * The damaged-blocks list, `health/damaged-blocks.json` (`docs/repository-format.md`): what health
 * checks found, kept in the repository so that it outlives the process. Each entry is one stored
 * copy of a block (a hash in a pack) that failed, or a needed hash that no pack holds (`pack: null`).
 *
 * Only `ferry verify` writes it (two health checks exclude each other through their locks). Backups
 * read it: a hash whose every indexed copy is listed counts as not stored, so the next backup of a
 * disk that needs it stores a fresh copy (self-heal), and reads prefer an unlisted copy. Entries of
 * packs that garbage collection has removed simply stop matching anything.
 */
export const DAMAGED_BLOCKS_KEY = 'health/damaged-blocks.json';

export type DamageReason = 'crc' | 'auth' | 'sha256' | 'malformed' | 'truncated' | 'pack-missing' | 'not-indexed' | 'unreadable';

export interface DamagedBlock {
  /** SHA-256 (hex) of the block's content. */
  hash: string;
  /** Pack holding the damaged copy; null when no pack lists the block at all. */
  pack: string | null;
  /** Offset of the block object in the pack; null with `pack: null`. */
  offset: number | null;
  reason: DamageReason;
  /** The error as the check saw it. */
  detail: string;
  /** When a health check first found it. */
  foundAt: string;
}

interface DamagedBlocksObject {
  format: 'ferry-damaged-blocks';
  version: 1;
  updatedAt: string;
  blocks: DamagedBlock[];
}

/**
 * The list as stored; empty when there is none. An unreadable list is treated as empty: it is
 * advice for healing, and the next health check writes it again from what it reads.
 */
export async function readDamagedBlocks(backend: RepositoryBackend): Promise<DamagedBlock[]> {
  let raw: Uint8Array;
  try {
    raw = await backend.get(DAMAGED_BLOCKS_KEY);
  } catch (err) {
    // Missing, or sealed and failing its tag (encrypted repositories): treated like a list that is not JSON.
    if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND') || isFerryError(err, 'REPO_CORRUPT_OBJECT')) return [];
    throw err;
  }
  try {
    const obj = JSON.parse(Buffer.from(raw).toString('utf8')) as DamagedBlocksObject;
    return obj.format === 'ferry-damaged-blocks' && Array.isArray(obj.blocks) ? obj.blocks : [];
  } catch {
    return [];
  }
}

/** Replaces the list atomically (one put); an empty list removes the object. */
export async function writeDamagedBlocks(backend: RepositoryBackend, blocks: DamagedBlock[], now = new Date()): Promise<void> {
  if (blocks.length === 0) {
    await backend.delete(DAMAGED_BLOCKS_KEY);
    return;
  }
  const obj: DamagedBlocksObject = { format: 'ferry-damaged-blocks', version: 1, updatedAt: now.toISOString(), blocks };
  await backend.put(DAMAGED_BLOCKS_KEY, Buffer.from(JSON.stringify(obj, null, 2) + '\n'));
}

/** Damaged copies by hash: the set of packs (`''` for "no pack") each hash is known damaged in. */
export type DamageIndex = Map<string, Set<string>>;

export function damageIndex(blocks: DamagedBlock[]): DamageIndex {
  const out: DamageIndex = new Map();
  for (const b of blocks) {
    let packs = out.get(b.hash);
    if (!packs) out.set(b.hash, (packs = new Set()));
    packs.add(b.pack ?? '');
  }
  return out;
}
