import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BlockMap, decodeIndex } from '@ferry/core';
import type { Prng } from '@ferry/core/testing';

/** One stored block as the repository's index objects list it. */
export interface StoredBlock {
  hash: string;
  pack: string;
  /** The pack file. */
  file: string;
  offset: number;
  length: number;
}

/** One disk of one committed restore point, with every block's hash (undefined: zero block). */
export interface PointDisk {
  vm: string;
  point: string;
  disk: string;
  blockSize: number;
  hashes: (string | undefined)[];
}

function files(dir: string): string[] {
  const out: string[] = [];
  let entries: import('node:fs').Dirent[] = [];
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return out;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...files(p));
    else out.push(p);
  }
  return out.sort();
}

/** Every block the repository's index objects list. */
export function storedBlocks(repo: string): StoredBlock[] {
  return files(path.join(repo, 'index')).flatMap((f) => {
    const { packId, entries } = decodeIndex(readFileSync(f), f);
    const file = path.join(repo, 'packs', packId.slice(0, 2), packId);
    return entries.map((e) => ({ hash: e.hash.toString('hex'), pack: packId, file, offset: e.offset, length: e.length }));
  });
}

/** Every disk of every committed restore point, read straight from the files. */
export function pointDisks(repo: string): PointDisk[] {
  return files(path.join(repo, 'points'))
    .filter((f) => f.endsWith('.json'))
    .flatMap((f) => {
      const m = JSON.parse(readFileSync(f, 'utf8')) as { id: string; vm: string; disks: { name: string; map: string }[] };
      return m.disks.map((d) => {
        const map = BlockMap.decode(readFileSync(path.join(repo, d.map)), d.map);
        const hashes = Array.from({ length: map.blockCount }, (_, i) => map.get(i)?.toString('hex'));
        return { vm: m.vm, point: m.id, disk: d.name, blockSize: map.blockSize, hashes };
      });
    });
}

/** Flips one random bit inside the stored block object. */
export function flipBit(b: StoredBlock, rng: Prng): void {
  const data = readFileSync(b.file);
  const at = b.offset + rng.int(b.length);
  data[at] ^= 1 << rng.int(8);
  writeFileSync(b.file, data);
}

/** Cuts a pack file to `keep` bytes; returns the blocks that no longer fit in it. */
export function truncatePack(blocks: StoredBlock[], pack: string, keep: number): StoredBlock[] {
  const file = blocks.find((b) => b.pack === pack)!.file;
  truncateSync(file, keep);
  return blocks.filter((b) => b.pack === pack && b.offset + b.length > keep);
}

export function fileSize(f: string): number {
  return statSync(f).size;
}

/** The repository's files under a folder (relative names), e.g. `packs` or `gc`. */
export function repoFiles(repo: string, sub: string): string[] {
  return files(path.join(repo, sub)).map((f) => path.relative(repo, f));
}
