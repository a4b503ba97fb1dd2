/**
 * npm run bench — measures, in one run on this machine:
 *  1. the hot-path primitives against the card's packages (SHA-256: node:crypto vs sha256-uint8array;
 *     deflate: node:zlib vs pako; CRC-32: crc-32), printing the ratio between each pair;
 *  2. Ferry end to end on a generated VM-like image: full backup, a second run after 1% changed,
 *     restore, at each compression level, with wall time, CPU time, peak RSS and repository size.
 * Results go to stdout as tables and to bench/results/<timestamp>.json.
 */
import { createHash } from 'node:crypto';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { deflateRawSync } from 'node:zlib';
import CRC32 from 'crc-32';
import * as pako from 'pako';
import { createHash as jsSha256 } from 'sha256-uint8array';
import { COMPRESSION_LEVELS } from '@ferry/core';
import { changeVmImage, makeVmImage, Prng } from '@ferry/core/testing';
import { runCase, type CaseResult } from './ferry-case.js';

const MiB = 1024 * 1024;
const here = path.dirname(fileURLToPath(import.meta.url));
const SIZE_MIB = Number(process.env.FERRY_BENCH_IMAGE_MIB ?? 1024);

interface PrimitiveResult {
  name: string;
  mibPerSec: number;
}

function measure(name: string, data: Buffer, fn: (b: Buffer) => unknown, minMs = 700): PrimitiveResult {
  fn(data); // warm up
  let bytes = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < minMs) {
    fn(data);
    bytes += data.length;
  }
  return { name, mibPerSec: bytes / MiB / ((performance.now() - t0) / 1000) };
}

function primitives(): { results: PrimitiveResult[]; ratios: { pair: string; ratio: number }[] } {
  const rng = new Prng(1);
  const block = Buffer.alloc(MiB);
  // VM-like block: half text-ish, half random
  block.write('the kernel wrote a journal block to the ext4 inode cache '.repeat(9000).slice(0, MiB / 2));
  rng.fill(block.subarray(MiB / 2));
  const results = [
    measure('sha256 node:crypto (hot path)', block, (b) => createHash('sha256').update(b).digest()),
    measure('sha256 sha256-uint8array', block, (b) => jsSha256().update(b).digest()),
    measure('deflate-1 node:zlib (hot path)', block, (b) => deflateRawSync(b, { level: 1 })),
    measure('deflate-1 pako', block, (b) => pako.deflateRaw(b, { level: 1 })),
    measure('crc-32 (hot path)', block, (b) => CRC32.buf(b)),
  ];
  const by = Object.fromEntries(results.map((r) => [r.name, r.mibPerSec]));
  return {
    results,
    ratios: [
      { pair: 'node:crypto / sha256-uint8array', ratio: by['sha256 node:crypto (hot path)'] / by['sha256 sha256-uint8array'] },
      { pair: 'node:zlib / pako (deflate-1)', ratio: by['deflate-1 node:zlib (hot path)'] / by['deflate-1 pako'] },
    ],
  };
}

function fmt(n: number, d = 1): string {
  return n.toFixed(d);
}

function printTable(head: string[], rows: (string | number)[][]): void {
  const cells = rows.map((r) => r.map(String));
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]): string => r.map((c, i) => c.padEnd(w[i])).join('  ');
  console.log(line(head));
  console.log(line(w.map((x) => '-'.repeat(x))));
  for (const r of cells) console.log(line(r));
  console.log();
}

async function main(): Promise<void> {
  console.log(`Ferry benchmark on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown CPU'}), Node ${process.version}\n`);
  const prim = primitives();
  console.log('Hot-path primitives, one core, 1 MiB VM-like blocks:');
  printTable(['primitive', 'MiB/s'], prim.results.map((r) => [r.name, fmt(r.mibPerSec)]));
  printTable(['ratio', 'x'], prim.ratios.map((r) => [r.pair, fmt(r.ratio, 2)]));

  const work = path.join(os.tmpdir(), `ferry-bench-${process.pid}`);
  mkdirSync(path.join(work, 'images'), { recursive: true });
  const image = path.join(work, 'images', 'vm.raw');
  const cases: CaseResult[] = [];
  try {
    const stats = await makeVmImage(image, { sizeBytes: SIZE_MIB * MiB, seed: 2026, holes: 0.45, unit: 256 * 1024 });
    console.log(`Image: ${SIZE_MIB} MiB, ${fmt(stats.dataBytes / MiB, 0)} MiB allocated, page cache warm.\n`);
    for (const level of COMPRESSION_LEVELS) {
      const repo = path.join(work, `repo-${level}`);
      const base = { work, image, repo, level };
      const snapshot = path.join(work, 'vm.base');
      await import('node:fs/promises').then((f) => f.copyFile(image, snapshot));
      cases.push(await runCase({ ...base, scenario: 'full backup' }));
      await changeVmImage(image, { count: Math.round((SIZE_MIB * MiB) / (64 * 1024) / 100), length: 64 * 1024, seed: 3 });
      cases.push(await runCase({ ...base, scenario: 'second run, 1% changed' }));
      cases.push(await runCase({ ...base, scenario: 'restore' }));
      await import('node:fs/promises').then((f) => f.copyFile(snapshot, image));
      rmSync(repo, { recursive: true, force: true });
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  console.log('Ferry end to end (embedded pipe, file source, hot-add, filesystem repository):');
  printTable(
    ['level', 'scenario', 'wall s', 'cpu s', 'peak RSS MiB', 'MiB/s of disk', 'repo MiB'],
    cases.map((c) => [c.level, c.scenario, fmt(c.wallMs / 1000, 2), fmt(c.cpuMs / 1000, 2), fmt(c.peakRssMiB, 0), fmt(c.diskMiBPerSec, 0), fmt(c.repoMiB, 1)]),
  );
  const out = path.resolve(here, '..', 'results', `${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  mkdirSync(path.dirname(out), { recursive: true });
  writeFileSync(out, JSON.stringify({ machine: { cpus: os.cpus().length, node: process.version }, imageMiB: SIZE_MIB, primitives: prim, cases }, null, 2));
  console.log(`Written ${path.relative(process.cwd(), out)}`);
}

await main();
