/**
 * npm run bench — measures, in one run on this machine:
 *  1. the hot-path primitives against the design card's packages (SHA-256: node:crypto vs
 *     sha256-uint8array; deflate: node:zlib vs pako; CRC-32), and each compression level's codec
 *     on one core over the benchmark image's data;
 *  2. on the same deterministic VM-like images: Ferry at every compression level, restic and borg
 *     (full backup, second run after 1% of the blocks changed, restore), Ferry's incremental run
 *     with change tracking (QEMU source on qemu-storage-daemon), the same data in a 64 GiB sparse
 *     image, and the NBD read path against nbdcopy on one qemu-nbd export;
 *  3. the issue's targets, met or missed.
 * Peers and QEMU tools that are not installed are left out with a note. Tables go to stdout
 * (markdown), everything to bench/results/<timestamp>.json.
 *
 * Knobs (environment): FERRY_BENCH_IMAGE_MIB (2048), FERRY_BENCH_SPARSE_GIB (64),
 * FERRY_BENCH_RUNS (1; the median run is kept), FERRY_BENCH_LEVELS (all),
 * FERRY_BENCH_ONLY (comma list of fixed,ferry,restic,borg,cbt,sparse,nbd,remote,serve,index; default all;
 * `fixed` and `index` need no image: either or both alone run in seconds or minutes (`index`: src/index-scale.ts)),
 * FERRY_BENCH_FIXED_RUNS (15),
 * FERRY_BENCH_FIXED_BASELINE (another built checkout's bin/ferry.js, compared in the same rotation),
 * FERRY_BENCH_NBD_CONNECTIONS (1), FERRY_BENCH_BORG_ENCRYPTION (none), FERRY_BENCH_KEEP=1 keeps the
 * work folder, TMPDIR picks its disk.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { COMPRESSION_LEVELS } from '@ferry/core';
import { Prng } from '@ferry/core/testing';
import { hasGnuTime, machine } from './measure.js';
import { borg, restic, type PeerTool } from './peers.js';
import { codecs, primitives, sampleBlocks, type CodecResult, type Primitives } from './primitives.js';
import { CBT_TOOLS, changeTrackingRuns, missing, NBD_TOOLS, nbdReadRuns, type NbdVariant } from './qemu-scenarios.js';
import { mainTable, medians, printTable, stageTable, targets, targetTable, withRatios } from './report.js';
import { ferryLevels, fixedCostRun, peerRuns, sparseRuns, withShas, type Images, type PassContext, type Row } from './scenarios.js';
import { remoteRuns } from './remote-scenario.js';
import { serveRuns, SERVE_TOOLS } from './serve-scenario.js';
import { fixedCostCase, fixedCostTable, type FixedCostResult } from './fixed-cost.js';
import { indexScale, type IndexScaleResult } from './index-scale.js';
import { changeSet, derivedImage, generateImage, randomBytes, textBytes } from './vm-image.js';

const MiB = 1024 * 1024;
const here = path.dirname(fileURLToPath(import.meta.url));
const env = process.env;
const SIZE_MIB = Number(env.FERRY_BENCH_IMAGE_MIB ?? 2048);
const SPARSE_GIB = Number(env.FERRY_BENCH_SPARSE_GIB ?? 64);
const RUNS = Math.max(1, Number(env.FERRY_BENCH_RUNS ?? 1));
const LEVELS = (env.FERRY_BENCH_LEVELS ?? COMPRESSION_LEVELS.join(',')).split(',').map((s) => s.trim());
const ONLY = new Set((env.FERRY_BENCH_ONLY ?? 'fixed,ferry,restic,borg,cbt,sparse,nbd,remote,serve,index').split(',').map((s) => s.trim()));
const FIXED_RUNS = Math.max(1, Number(env.FERRY_BENCH_FIXED_RUNS ?? 15));
const NBD_CONNECTIONS = (env.FERRY_BENCH_NBD_CONNECTIONS ?? '1').split(',').map(Number);
// A diagnostic variant of the NBD read path with the repository in RAM: what the pipe does when the
// repository disk's write speed is out of the picture. Off with FERRY_BENCH_TMPFS=none.
const TMPFS = env.FERRY_BENCH_TMPFS ?? (existsSync('/dev/shm') ? '/dev/shm' : 'none');
const BLOCK = MiB; // Ferry's default block size; the change set rewrites 1% of these blocks
const fmt = (n: number, d = 1): string => n.toFixed(d);

function log(line: string): void {
  console.log(`  · ${line}`);
}

async function makeImages(work: string): Promise<Images> {
  const t0 = performance.now();
  const base = await generateImage(path.join(work, 'base.raw'), { sizeBytes: SIZE_MIB * MiB, seed: 2026 });
  const changes = changeSet(base.sizeBytes, BLOCK, 0.01, 7);
  const changed = await derivedImage(base, path.join(work, 'changed.raw'), { changes });
  mkdirSync(path.join(work, 'sparse-ds'), { recursive: true });
  const sparse = ONLY.has('sparse')
    ? await derivedImage(base, path.join(work, 'sparse-ds', `vm${SPARSE_GIB}g.raw`), { sizeBytes: SPARSE_GIB * 1024 * MiB, pieceBytes: Math.min(64 * MiB, base.sizeBytes) })
    : base;
  const images = await withShas({ base, changed, changes, sparse });
  // The images' dirty pages are written out now, not under the first tool measured (its fsyncs
  // would queue behind gigabytes of image writeback: 10.6 s instead of ~5.5 s for Ferry's first row).
  execFileSync('sync');
  log(`images made (and synced) in ${fmt((performance.now() - t0) / 1000)} s`);
  return images;
}

function nbdVariants(): NbdVariant[] {
  const out: NbdVariant[] = NBD_CONNECTIONS.map((n) => ({ connections: n, label: n === 1 ? 'none' : `none, ${n} connections` }));
  if (TMPFS !== 'none') out.push({ connections: NBD_CONNECTIONS[0], repoDir: TMPFS, label: `none, repository in ${TMPFS} (tmpfs)` });
  return out;
}

async function pass(ctx: PassContext, peers: PeerTool[], skipped: string[], n: number): Promise<Row[]> {
  console.log(`Pass ${n + 1} of ${RUNS} (load average ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}):`);
  const rows: Row[] = [];
  if (ONLY.has('ferry')) rows.push(await fixedCostRun(ctx), ...(await ferryLevels(ctx)));
  for (const p of peers) rows.push(...(await peerRuns(ctx, p)));
  if (ONLY.has('cbt') && !skipped.some((s) => s.startsWith('change tracking'))) rows.push(...(await changeTrackingRuns(ctx)));
  if (ONLY.has('sparse')) rows.push(...(await sparseRuns(ctx)));
  if (ONLY.has('nbd') && !skipped.some((s) => s.startsWith('NBD read'))) rows.push(...(await nbdReadRuns(ctx, nbdVariants())));
  if (ONLY.has('remote')) rows.push(...(await remoteRuns(ctx)));
  if (ONLY.has('serve') && !skipped.some((s) => s.startsWith('ferry serve'))) rows.push(...(await serveRuns(ctx)));
  return rows;
}

/** Which peers run, and what is left out because it is not installed. */
async function findPeers(work: string): Promise<{ peers: PeerTool[]; skipped: string[]; versions: Record<string, string> }> {
  const peers: PeerTool[] = [];
  const skipped: string[] = [];
  const versions: Record<string, string> = {};
  for (const p of [restic(work), borg(work)]) {
    if (!ONLY.has(p.name)) continue;
    if (p.available()) {
      peers.push(p);
      versions[p.name] = await p.version();
    } else skipped.push(`${p.name}: not installed (Debian package ${p.debianPackage})`);
  }
  const cbtMissing = missing(CBT_TOOLS);
  if (ONLY.has('cbt') && cbtMissing) skipped.push(`change tracking: ${cbtMissing}`);
  const nbdMissing = missing(NBD_TOOLS);
  if (ONLY.has('nbd') && nbdMissing) skipped.push(`NBD read: ${nbdMissing}`);
  const serveMissing = missing(SERVE_TOOLS);
  if (ONLY.has('serve') && serveMissing) skipped.push(`ferry serve: ${serveMissing}`);
  for (const s of skipped) console.log(`Skipped ${s}`);
  return { peers, skipped, versions };
}

/** The one-core measurements: hot-path primitives against the card's packages, and the codecs. */
async function oneCore(images: Images): Promise<{ prim: Primitives; codecResults: CodecResult[] }> {
  // One VM-like block for the primitives: half text-like, half random, as the generator makes them.
  const block = Buffer.concat([textBytes(new Prng(1), MiB / 2), randomBytes(1, 0, MiB / 2)]);
  const prim = primitives(block);
  console.log('Hot-path primitives, one core, one 1 MiB block (half text-like, half random):');
  printTable(['primitive', 'MiB/s'], prim.results.map((r) => [r.name, fmt(r.mibPerSec)]));
  printTable(['ratio', 'x'], prim.ratios.map((r) => [r.pair, fmt(r.ratio, 2)]));
  const sample = await sampleBlocks(images.base, 256 * MiB);
  const codecResults = await codecs(sample);
  const rate = (c: CodecResult, v: number): string => (c.codec === 'none' ? '(no work)' : fmt(v, 0));
  console.log(`Compression levels, one core, ${sample.length} MiB of the image's allocated data in 1 MiB blocks:`);
  printTable(
    ['level', 'codec', 'compress MiB/s', 'decompress MiB/s', 'stored/raw'],
    codecResults.map((c) => [c.level, c.codec, rate(c, c.compressMiBPerSec), rate(c, c.decompressMiBPerSec), fmt(c.ratio, 3)]),
  );
  return { prim, codecResults };
}

function loadNow(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}

async function main(): Promise<void> {
  const started = new Date();
  const m = machine();
  console.log(`Ferry benchmark: ${m.cpus} cores (${m.cpuModel}), ${m.memGiB} GiB RAM, Node ${m.node}, Linux ${m.kernel}, work disk ${m.disk}`);
  console.log(`Load average before the run: ${m.loadavg.join(' ')}; peak RSS and CPU via ${hasGnuTime ? '/usr/bin/time -v and /proc polling' : '/proc polling'}\n`);
  const work = path.join(os.tmpdir(), `ferry-bench-${process.pid}`);
  mkdirSync(work, { recursive: true });
  let result: object;
  const noImage = [...ONLY].every((c) => c === 'fixed' || c === 'index');
  try {
    let fixed: FixedCostResult | undefined;
    if (ONLY.has('fixed')) {
      console.log(`Fixed cost (issue 18), ${FIXED_RUNS} runs of each in turn after a warm-up, load average ${loadNow().join(' ')}:`);
      fixed = await fixedCostCase(work, FIXED_RUNS, log);
      fixedCostTable(fixed);
    }
    if (noImage) {
      // Only the cases that need no image: no image, no peers.
      const indexScale = ONLY.has('index') ? await indexCase() : undefined;
      result = { startedAt: started.toISOString(), machine: { ...m, loadAfter: loadNow() }, config: { only: [...ONLY], fixedRuns: FIXED_RUNS }, fixed, indexScale };
      return;
    }
    const { peers, skipped, versions } = await findPeers(work);
    const images = await makeImages(work);
    const changedBytes = images.changes.reduce((n, c) => n + c.data.length, 0);
    console.log(
      `Image: ${SIZE_MIB} MiB, ${fmt(images.base.dataBytes / MiB, 0)} MiB allocated (${fmt((100 * images.base.dataBytes) / images.base.sizeBytes, 0)}%); ` +
        `change set: ${images.changes.length} blocks of 1 MiB (${fmt(changedBytes / MiB, 0)} MiB)${ONLY.has('sparse') ? `; sparse image: ${SPARSE_GIB} GiB, same data` : ''}\n`,
    );
    const { prim, codecResults } = await oneCore(images);
    const ctx: PassContext = { work, images, levels: LEVELS, log };
    const passes: Row[][] = [];
    const passLoads: number[][] = [];
    for (let i = 0; i < RUNS; i++) {
      passLoads.push(loadNow());
      passes.push(await pass(ctx, peers, skipped, i));
    }
    const rows = withRatios(medians(passes));
    const loadAfter = loadNow();
    console.log(`\nResults${RUNS > 1 ? ` (median of ${RUNS} runs)` : ''}; ratios are Ferry's wall time / the peer's (lower is better):\n`);
    mainTable(rows);
    console.log('Ferry stage busy shares (session report):\n');
    stageTable(rows);
    const ts = targets(rows, changedBytes, fixed);
    console.log('Targets (issue 18; repository size: issue 7):\n');
    targetTable(ts);
    const index = ONLY.has('index') ? await indexCase() : undefined;
    console.log(`Load average after the run: ${loadAfter.join(' ')}`);
    result = {
      startedAt: started.toISOString(),
      machine: { ...m, loadAfter, passLoads },
      config: { fixedRuns: FIXED_RUNS, imageMiB: SIZE_MIB, sparseGiB: SPARSE_GIB, runs: RUNS, levels: LEVELS, only: [...ONLY], blockSize: BLOCK, nbdConnections: NBD_CONNECTIONS },
      versions,
      skipped,
      images: {
        sizeBytes: images.base.sizeBytes,
        dataBytes: images.base.dataBytes,
        changedDataBytes: images.changed.dataBytes,
        changedBlocks: images.changes.length,
        changedBytes,
        sparseSizeBytes: images.sparse.sizeBytes,
      },
      primitives: prim,
      codecs: codecResults,
      rows,
      passes,
      targets: ts,
      fixed,
      indexScale: index,
    };
  } finally {
    if (env.FERRY_BENCH_KEEP === '1') console.log(`Kept ${work}`);
    else rmSync(work, { recursive: true, force: true });
    if (noImage && result!) writeResult(started, result);
  }
  writeResult(started, result);
}

/** The index scale case and its targets (issue 14): warm open <= 2 s, <= 40 bytes per block. */
async function indexCase(): Promise<IndexScaleResult> {
  console.log('');
  const r = await indexScale((line) => console.log(line));
  const warm = r.phases.find((p) => p.phase === 'warm')!;
  printTable(
    ['target (issue 14)', 'measured', 'met'],
    [
      ['open warm <= 2 s', `${fmt(warm.seconds, 2)} s`, warm.seconds <= 2 ? 'yes' : 'no'],
      // 40 bytes per entry; the prefix table (256 KiB) and one byte per pack come on top.
      ['index <= 40 B/block', `${fmt(r.bytesPerBlock, 2)} B/block in typed arrays (peak RSS ${fmt(r.peakRssBytesPerBlockWarm, 0)} B/block)`, r.entryBytes <= 40 ? 'yes (40 B/entry + tables)' : 'no'],
      ['warm open GETs no index object', `${warm.gets} GETs`, warm.gets === 0 ? 'yes' : 'no'],
    ],
  );
  return r;
}

function writeResult(started: Date, result: object): void {
  const out = path.resolve(here, '..', 'results', `${started.toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify(result, null, 2));
  console.log(`Written ${path.relative(process.cwd(), out)}`);
}

await main();
