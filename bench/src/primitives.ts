import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 as zlibCrc32, deflateRawSync } from 'node:zlib';
import CRC32 from 'crc-32';
import * as pako from 'pako';
import { createHash as jsSha256 } from 'sha256-uint8array';
import { COMPRESSION_LEVELS, LEVEL_CODECS, PluginHost, registerBuiltins, type Compressor } from '@ferry/core';
import type { BenchImage } from './vm-image.js';

const MiB = 1024 * 1024;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export interface PrimitiveResult {
  name: string;
  mibPerSec: number;
}

export interface Primitives {
  results: PrimitiveResult[];
  ratios: { pair: string; ratio: number }[];
}

export interface CodecResult {
  level: string;
  codec: string;
  /** One core, 1 MiB blocks of the benchmark image's allocated data. */
  compressMiBPerSec: number;
  decompressMiBPerSec: number;
  /** Compressed / raw over the sample (blocks that do not shrink count at raw size, as stored). */
  ratio: number;
}

function rate(bytes: number, ms: number): number {
  return bytes / MiB / (ms / 1000);
}

function measure(name: string, data: Buffer, fn: (b: Buffer) => unknown, minMs = 700): PrimitiveResult {
  fn(data); // warm up
  let bytes = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < minMs) {
    fn(data);
    bytes += data.length;
  }
  return { name, mibPerSec: rate(bytes, performance.now() - t0) };
}

/**
 * The hot path's primitives against the design card's packages, one core, a 1 MiB VM-like block.
 * Deflate is no level's codec any more (zstd won, see the codec table); the built-in `deflate`
 * compressor (node:zlib) stays so blocks written with it restore.
 */
export function primitives(block: Buffer): Primitives {
  const results = [
    measure('sha256 node:crypto (hot path)', block, (b) => createHash('sha256').update(b).digest()),
    measure('sha256 sha256-uint8array', block, (b) => jsSha256().update(b).digest()),
    measure('deflate-1 node:zlib', block, (b) => deflateRawSync(b, { level: 1 })),
    measure('deflate-1 pako', block, (b) => pako.deflateRaw(b, { level: 1 })),
    measure('crc32 node:zlib (hot path)', block, (b) => zlibCrc32(b)),
    measure('crc32 crc-32', block, (b) => CRC32.buf(b)),
  ];
  const by = Object.fromEntries(results.map((r) => [r.name, r.mibPerSec]));
  return {
    results,
    ratios: [
      { pair: 'node:crypto / sha256-uint8array', ratio: by['sha256 node:crypto (hot path)'] / by['sha256 sha256-uint8array'] },
      { pair: 'node:zlib / pako (deflate-1)', ratio: by['deflate-1 node:zlib'] / by['deflate-1 pako'] },
      { pair: 'node:zlib / crc-32 (CRC-32)', ratio: by['crc32 node:zlib (hot path)'] / by['crc32 crc-32'] },
    ],
  };
}

/** Up to `maxBytes` of the image's allocated data as whole 1 MiB blocks, in image order. */
export async function sampleBlocks(img: BenchImage, maxBytes: number): Promise<Buffer[]> {
  const fh = await fs.open(img.file, 'r');
  const out: Buffer[] = [];
  try {
    for (const r of img.regions) {
      for (let off = Math.ceil(r.offset / MiB) * MiB; off + MiB <= r.offset + r.length && out.length * MiB < maxBytes; off += MiB) {
        const b = Buffer.allocUnsafe(MiB);
        await fh.read(b, 0, MiB, off);
        out.push(b);
      }
    }
  } finally {
    await fh.close();
  }
  return out;
}

/**
 * Each compression level's codec on one core, built through the plugin host exactly as the block
 * workers build them, over blocks of the benchmark image.
 */
export async function codecs(blocks: Buffer[]): Promise<CodecResult[]> {
  const host = await PluginHost.create({ installRoot: ROOT }, registerBuiltins);
  const raw = blocks.length * MiB;
  const out: CodecResult[] = [];
  // The levels' codecs, then the built-in deflate (no level uses it: zstd was picked over it here).
  const candidates: { level: string; compressor: string; n: number }[] = [
    ...COMPRESSION_LEVELS.map((l) => ({ level: l, compressor: LEVEL_CODECS[l].compressor, n: LEVEL_CODECS[l].level })),
    { level: '(not a level)', compressor: 'deflate', n: 1 },
    { level: '(not a level)', compressor: 'deflate', n: 6 },
  ];
  for (const { level, compressor, n } of candidates) {
    const c = (await host.create('compressor', compressor, host.container)) as Compressor;
    const t0 = performance.now();
    const packed = blocks.map((b) => c.compress(b, n));
    const t1 = performance.now();
    for (const [i, p] of packed.entries()) if (p.length < MiB) c.decompress(p, blocks[i].length);
    const t2 = performance.now();
    const stored = packed.reduce((s, p) => s + Math.min(p.length, MiB), 0);
    out.push({ level, codec: n ? `${compressor} ${n}` : compressor, compressMiBPerSec: rate(raw, t1 - t0), decompressMiBPerSec: rate(raw, t2 - t1), ratio: stored / raw });
  }
  return out;
}
