import { readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { BlockMap, decodeIndex, decodeIndexV2 } from '@ferry/core';
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

/** The repository's format version, from its config. */
export function repoFormat(repo: string): number {
  return (JSON.parse(readFileSync(path.join(repo, 'ferry-repository.json'), 'utf8')) as { version: number }).version;
}

/** The file of a key: format 2 keeps locks, the health record and gc's state under `mutable/`. */
export function repoPath(repo: string, key: string): string {
  const mutable = /^(locks|health|gc)(\/|$)/.test(key) && repoFormat(repo) === 2;
  return path.join(repo, mutable ? 'mutable' : '', key);
}

/** Every block the repository's index objects list (format 1 `index/`, format 2 `indexes/`). */
export function storedBlocks(repo: string): StoredBlock[] {
  const packFile = (id: string): string => path.join(repo, 'packs', id.slice(0, 2), id);
  const v1 = files(path.join(repo, 'index')).flatMap((f) => {
    const { packId, entries } = decodeIndex(readFileSync(f), f);
    const file = packFile(packId);
    return entries.map((e) => ({ hash: e.hash.toString('hex'), pack: packId, file, offset: e.offset, length: e.length }));
  });
  const seen = new Set<string>();
  const v2: StoredBlock[] = [];
  for (const f of files(path.join(repo, 'indexes'))) {
    const decoded = decodeIndexV2(readFileSync(f), f);
    decoded.forEach((hash, n, offset, length) => {
      const pack = decoded.packs[n].id;
      const hex = Buffer.from(hash).toString('hex');
      if (seen.has(`${hex}${pack}`)) return; // listed again by a merged object
      seen.add(`${hex}${pack}`);
      v2.push({ hash: hex, pack, file: packFile(pack), offset, length });
    });
  }
  return [...v1, ...v2].sort((a, b) => (a.pack < b.pack ? -1 : a.pack > b.pack ? 1 : a.offset - b.offset));
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
