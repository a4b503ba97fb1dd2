/**
 * The index scale case (issue 14): a synthetic repository index of FERRY_BENCH_INDEX_BLOCKS blocks
 * (default 10 million), generated directly: no block data, only index objects (one per pack of
 * FERRY_BENCH_INDEX_PER_PACK blocks, 32 by default: 16 MiB packs of 1 MiB blocks compressed to about
 * half) served by an in-process backend that makes each object from its key when it is read.
 *
 * Each phase runs in its own process so its peak RSS is its own:
 *  - cold, no cache: list, GET and decode every index object, build the in-memory index;
 *  - cold, filling the cache: the same, writing every object and the snapshot to the local cache;
 *  - warm: the cache's snapshot is loaded (one listing, no GET);
 *  - lookups: hashes that are stored and hashes that are not, against the warm index.
 * Run it alone: `FERRY_BENCH_ONLY=index node bench/dist/bench.js` or `node bench/dist/index-scale.js`.
 */
import { fork } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BlockStore, encodeIndex, encodeIndexV2, RUN_ENTRY, FerryError, IndexCache, RepositoryStorage, type PackEntry, type RepositoryBackend } from '@ferry/core';

const BLOCKS = Number(process.env.FERRY_BENCH_INDEX_BLOCKS ?? 10_000_000);
const PER_PACK = Number(process.env.FERRY_BENCH_INDEX_PER_PACK ?? 32);
const RECORD = 512 * 1024 + 40;
/**
 * Repository format of the synthetic index: 2 (default) consolidated index objects of 256 packs
 * each, listed under `indexes/`; 1 one index object per pack and a `packs/` listing.
 */
const FORMAT = Number(process.env.FERRY_BENCH_INDEX_FORMAT ?? 2) === 1 ? 1 : 2;
const PACKS_PER_OBJECT = 256;

/** A fast deterministic fill (xorshift32): SHA-256-like uniform bytes without hashing anything. */
function fill(out: Uint8Array, seed: number): void {
  let x = seed | 1;
  for (let i = 0; i < out.length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x;
    out[i + 1] = x >>> 8;
    out[i + 2] = x >>> 16;
    out[i + 3] = x >>> 24;
  }
}

function packId(p: number): string {
  const b = new Uint8Array(32);
  fill(b, 0x9e3779b9 ^ (p * 2654435761));
  return Buffer.from(b).toString('hex');
}

/** The hash of block `i` of pack `p`. */
function blockHash(p: number, i: number, out = new Uint8Array(32)): Uint8Array {
  fill(out, (p * PER_PACK + i + 1) * 2246822519);
  return out;
}

const PACKS = Math.ceil(BLOCKS / PER_PACK);
const OBJECTS = Math.ceil(PACKS / PACKS_PER_OBJECT);

function packEntries(p: number): PackEntry[] {
  const n = Math.min(PER_PACK, BLOCKS - p * PER_PACK);
  return Array.from({ length: n }, (_, i) => ({ hash: Buffer.from(blockHash(p, i)), offset: 8 + i * RECORD, length: RECORD }));
}

/** Format 2 index object `o`: packs `o * 256` onwards. */
function v2Object(o: number): Buffer {
  const packs = [];
  for (let p = o * PACKS_PER_OBJECT; p < Math.min(PACKS, (o + 1) * PACKS_PER_OBJECT); p++) {
    const entries = packEntries(p);
    packs.push({ id: packId(p), format: 2 as const, size: 16 + entries.length * (RECORD + 44) + 8, entries });
  }
  return encodeIndexV2(packs);
}

/**
 * Serves the synthetic repository's index: format 1 `index/` and `packs/`, or format 2 `indexes/`
 * (names computed once by the parent: `names`). Every index object is made when it is read.
 */
class SyntheticIndexBackend implements RepositoryBackend {
  readonly location = 'synthetic:';
  private readonly ids = FORMAT === 1 ? Array.from({ length: PACKS }, (_, p) => packId(p)) : (JSON.parse(readFileSync(namesFile(), 'utf8')) as string[]);
  private readonly byId = new Map(this.ids.map((id, p) => [id, p]));
  gets = 0;
  async get(key: string): Promise<Uint8Array> {
    const p = this.byId.get(key.slice(key.lastIndexOf('/') + 1));
    if (!(key.startsWith('index/') || key.startsWith('indexes/')) || p === undefined) throw new FerryError('REPO_OBJECT_NOT_FOUND', `no ${key}`, { object: key });
    this.gets++;
    return FORMAT === 1 ? encodeIndex(this.ids[p], packEntries(p)) : v2Object(p);
  }
  async put(): Promise<void> {}
  async putIfAbsent(): Promise<boolean> {
    return false;
  }
  async has(key: string): Promise<boolean> {
    return this.byId.has(key.slice(key.lastIndexOf('/') + 1));
  }
  async *list(prefix: string): AsyncIterable<string> {
    if (FORMAT === 2 && prefix === 'indexes/') for (const id of this.ids) yield `indexes/${id}`;
    if (FORMAT === 1 && (prefix === 'index/' || prefix === 'packs/')) for (const id of this.ids) yield `${prefix}${id.slice(0, 2)}/${id}`;
  }
  async delete(): Promise<void> {}
}

interface PhaseResult {
  phase: string;
  seconds: number;
  peakRssMiB: number;
  indexBytes: number;
  gets: number;
  lookupsPerSecond?: number;
}

/** One phase, in this process (the child). */
async function runPhase(phase: string, cacheDir: string): Promise<PhaseResult> {
  const raw = new SyntheticIndexBackend();
  const storage = new RepositoryStorage(raw, undefined, undefined);
  const cache = phase === 'cold' ? undefined : new IndexCache(cacheDir);
  const store = new BlockStore(storage, undefined, undefined, cache, FORMAT);
  const t0 = performance.now();
  await store.load();
  const seconds = (performance.now() - t0) / 1000;
  const result: PhaseResult = { phase, seconds, peakRssMiB: 0, indexBytes: store.indexBytes, gets: raw.gets };
  if (phase === 'warm') {
    const probes = 2_000_000;
    const h = new Uint8Array(32);
    let found = 0;
    const t1 = performance.now();
    for (let k = 0; k < probes; k++) {
      // Half stored blocks, half hashes that are not stored.
      if (k & 1) fill(h, k * 7919 + 3);
      else blockHash((k * 104729) % PACKS, k % Math.min(PER_PACK, BLOCKS), h);
      if (store.needsHeal(h) === false) found++;
    }
    result.lookupsPerSecond = Math.round(probes / ((performance.now() - t1) / 1000));
    if (found < probes / 2 - PER_PACK) throw new Error(`only ${found} of ${probes / 2} stored hashes found`);
  }
  result.peakRssMiB = Math.round(process.resourceUsage().maxRSS / 1024);
  return result;
}

function child(phase: string, cacheDir: string): Promise<PhaseResult> {
  return new Promise((resolve, reject) => {
    const p = fork(fileURLToPath(import.meta.url), ['--phase', phase, cacheDir], { execArgv: ['--max-old-space-size=8192'], env: { ...process.env, FERRY_BENCH_INDEX_NAMES: namesFile(cacheDir) } });
    p.on('message', (m) => resolve(m as PhaseResult));
    p.on('error', reject);
    p.on('exit', (code) => code !== 0 && reject(new Error(`index scale phase ${phase} exited with ${code}`)));
  });
}

/** The names of the format 2 index objects (their hashes), for the phases to list. */
export function writeNames(file: string): void {
  writeFileSync(file, JSON.stringify(Array.from({ length: OBJECTS }, (_, o) => createHash('sha256').update(v2Object(o)).digest('hex'))));
}

/** Where the parent leaves the format 2 index object names for the phases. */
function namesFile(cacheDir?: string): string {
  return process.env.FERRY_BENCH_INDEX_NAMES ?? path.join(cacheDir!, '..', `${path.basename(cacheDir!)}.names.json`);
}

export interface IndexScaleResult {
  format: 1 | 2;
  blocks: number;
  packs: number;
  indexObjects: number;
  phases: PhaseResult[];
  bytesPerBlock: number;
  /** Bytes of one entry of the sorted run (the per-block cost without per-pack and fixed tables). */
  entryBytes: number;
  peakRssBytesPerBlockWarm: number;
}

/** Runs the phases in child processes; prints a table. */
export async function indexScale(log: (line: string) => void = console.log): Promise<IndexScaleResult> {
  const cacheDir = mkdtempSync(path.join(os.tmpdir(), 'ferry-bench-index-'));
  try {
    const objects = FORMAT === 1 ? PACKS : OBJECTS;
    if (FORMAT === 2) {
      const t0 = performance.now();
      writeNames(namesFile(cacheDir));
      log(`  (named ${OBJECTS} generated index objects in ${((performance.now() - t0) / 1000).toFixed(1)} s)`);
    }
    log(
      `Index scale, format ${FORMAT}: ${BLOCKS.toLocaleString('en')} blocks (${PER_PACK} per pack, ${PACKS.toLocaleString('en')} packs) ` +
        `in ${objects.toLocaleString('en')} index objects, generated`,
    );
    const phases: PhaseResult[] = [];
    for (const phase of ['cold', 'fill', 'warm']) {
      const r = await child(phase, cacheDir);
      phases.push(r);
      log(
        `  ${phase.padEnd(5)} ${r.seconds.toFixed(2)} s, peak RSS ${r.peakRssMiB} MiB, index ${(r.indexBytes / BLOCKS).toFixed(1)} B/block, ` +
          `${r.gets} GETs${r.lookupsPerSecond ? `, ${(r.lookupsPerSecond / 1e6).toFixed(2)} M lookups/s` : ''}`,
      );
    }
    const warm = phases[2];
    return {
      format: FORMAT,
      blocks: BLOCKS,
      packs: PACKS,
      indexObjects: objects,
      phases,
      bytesPerBlock: warm.indexBytes / BLOCKS,
      entryBytes: RUN_ENTRY,
      peakRssBytesPerBlockWarm: (warm.peakRssMiB * 1024 * 1024) / BLOCKS,
    };
  } finally {
    rmSync(cacheDir, { recursive: true, force: true });
    rmSync(namesFile(cacheDir), { force: true });
  }
}

const isMain = process.argv[1] === fileURLToPath(import.meta.url);
if (isMain && process.argv[2] === '--phase') {
  const r = await runPhase(process.argv[3], process.argv[4]);
  process.send!(r);
} else if (isMain) {
  console.log(JSON.stringify(await indexScale(), null, 2));
}
