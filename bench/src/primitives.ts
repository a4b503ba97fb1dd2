import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 as zlibCrc32, deflateRawSync } from 'node:zlib';
import CRC32 from 'crc-32';
import * as pako from 'pako';
import { createHash as jsSha256 } from 'sha256-uint8array';
import { COMPRESSION_LEVELS, LEVEL_CODECS, PluginHost, registerBuiltins, type Compressor } from '@ferry/core';
import { Lz4Compressor, loadLz4Addon } from '@ferry/compress-lz4';
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
    ...lz4Primitives(block),
  ];
  const by = Object.fromEntries(results.map((r) => [r.name, r.mibPerSec]));
  const napiRate = (op: string): number => results.find((r) => r.name.startsWith(`lz4 ${op} lz4-napi`))!.mibPerSec;
  const lz4Ratios = LZ4_LIBLZ4
    ? [
        { pair: 'liblz4 / lz4-napi (lz4 compress)', ratio: by[`lz4 compress ${LZ4_LIBLZ4}`] / napiRate('compress') },
        { pair: 'liblz4 / lz4-napi (lz4 decompress)', ratio: by[`lz4 decompress ${LZ4_LIBLZ4}`] / napiRate('decompress') },
      ]
    : [];
  return {
    results,
    ratios: [
      { pair: 'node:crypto / sha256-uint8array', ratio: by['sha256 node:crypto (hot path)'] / by['sha256 sha256-uint8array'] },
      { pair: 'node:zlib / pako (deflate-1)', ratio: by['deflate-1 node:zlib'] / by['deflate-1 pako'] },
      { pair: 'node:zlib / crc-32 (CRC-32)', ratio: by['crc32 node:zlib (hot path)'] / by['crc32 crc-32'] },
      ...lz4Ratios,
    ],
  };
}

/** FERRY_LZ4=lz4-napi makes the plugin use lz4-napi even where the addon loads (before/after runs). */
const LZ4_FORCED_NAPI = process.env.FERRY_LZ4 === 'lz4-napi';
/** The liblz4 addon's label when it loaded, else undefined. */
const LZ4_LIBLZ4 = ((v) => (v ? `liblz4 ${v}${LZ4_FORCED_NAPI ? '' : ' (hot path)'}` : undefined))(loadLz4Addon()?.version);

/** The two implementations of the `lz4` compressor (same format): the liblz4 addon and lz4-napi. */
export function lz4Implementations(): { label: string; c: Lz4Compressor }[] {
  const addon = loadLz4Addon();
  return [
    ...(addon && LZ4_LIBLZ4 ? [{ label: LZ4_LIBLZ4, c: new Lz4Compressor(addon) }] : []),
    { label: !addon ? 'lz4-napi (hot path: the liblz4 addon is not built)' : LZ4_FORCED_NAPI ? 'lz4-napi (hot path: FERRY_LZ4)' : 'lz4-napi', c: new Lz4Compressor(null) },
  ];
}

function lz4Primitives(block: Buffer): PrimitiveResult[] {
  const out: PrimitiveResult[] = [];
  for (const { label, c } of lz4Implementations()) {
    const packed = c.compress(block, 0);
    out.push(measure(`lz4 compress ${label}`, block, (b) => c.compress(b, 0)));
    // Rate in raw (decompressed) bytes per second, like the codec table.
    let bytes = 0;
    c.decompress(packed, block.length);
    const t0 = performance.now();
    while (performance.now() - t0 < 700) {
      c.decompress(packed, block.length);
      bytes += block.length;
    }
    out.push({ name: `lz4 decompress ${label}`, mibPerSec: rate(bytes, performance.now() - t0) });
  }
  return out;
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
  const rows: { level: string; codec: string; n: number; make: () => Promise<Compressor> }[] = [
    ...candidates.map(({ level, compressor, n }) => ({
      level,
      codec: n ? `${compressor} ${n}` : compressor,
      n,
      make: async () => (await host.create('compressor', compressor, host.container)) as Compressor,
    })),
    // Both implementations of lz4 on the same blocks (the `optimal` row above is whichever loaded).
    ...lz4Implementations().map(({ label, c }) => ({ level: '(lz4 impl)', codec: `lz4 ${label}`, n: 0, make: async () => c })),
  ];
  for (const { level, codec, n, make } of rows) {
    const c = await make();
    const t0 = performance.now();
    const packed = blocks.map((b) => c.compress(b, n));
    const t1 = performance.now();
    for (const [i, p] of packed.entries()) if (p.length < MiB) c.decompress(p, blocks[i].length);
    const t2 = performance.now();
    const stored = packed.reduce((s, p) => s + Math.min(p.length, MiB), 0);
    out.push({ level, codec, compressMiBPerSec: rate(raw, t1 - t0), decompressMiBPerSec: rate(raw, t2 - t1), ratio: stored / raw });
  }
  return out;
}
