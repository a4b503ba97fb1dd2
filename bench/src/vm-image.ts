import { createCipheriv, createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { Prng } from '@ferry/core/testing';

/**
 * The benchmark's own deterministic VM-like images. Everything follows from one seed, so two
 * machines benchmark the same bytes:
 * - regions of 1..16 `unit`s (256 KiB by default) of these kinds, by share of the image:
 *   holes 45% (never written), allocated zeros 4%, text-like 25% (log/config words, compresses ~3x),
 *   random 14% (incompressible: keys, media, encrypted data), duplicates 12% (an earlier data region
 *   copied whole at another offset, as files copied inside a guest);
 * - random bytes come from AES-128-CTR keyed by seed and region, so generating them costs little.
 * A 2 GiB image holds ~1.1 GiB of allocated data, as in the issue.
 */
export interface ImageSpec {
  sizeBytes: number;
  seed: number;
  unit?: number;
}

export type RegionKind = 'zero' | 'text' | 'random' | 'duplicate';

/** An allocated region of the image (holes are what no region covers). */
export interface Region {
  offset: number;
  length: number;
  kind: RegionKind;
}

export interface BenchImage {
  file: string;
  sizeBytes: number;
  /** Allocated bytes (regions), zeros included: what hole-aware readers read. */
  dataBytes: number;
  regions: Region[];
}

/** One guest write: whole bytes at an offset. */
export interface Change {
  offset: number;
  data: Buffer;
}

const SHARES: [RegionKind | 'hole', number][] = [
  ['hole', 0.45],
  ['zero', 0.04],
  ['text', 0.25],
  ['random', 0.14],
  ['duplicate', 0.12],
];

const WORDS = (
  'the of and to in is was for on that with as by at from kernel page block inode journal ext4 ' +
  'user root var log http GET POST 200 404 error warning info debug session backup restore ' +
  'snapshot volume disk sector cache buffer write read sync mount proc sys etc lib usr bin ' +
  'systemd[1]: Started Stopped Reached target network.service sshd[2211]: Accepted publickey ' +
  'for from port ssh2 nginx: 10.0.3.17 - - "GET /api/v1/items HTTP/1.1" 200 5123 Mozilla/5.0'
)
  .split(' ')
  .map((w) => Buffer.from(w));

/** Deterministic incompressible bytes: AES-128-CTR keystream keyed by (seed, stream). */
export function randomBytes(seed: number, stream: number, length: number): Buffer {
  const key = createHash('sha256').update(`ferry-bench:${seed}:${stream}`).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return cipher.update(Buffer.alloc(length));
}

/** Text-like bytes: words and numbers with line breaks, as logs, configs and source files are. */
export function textBytes(rng: Prng, length: number): Buffer {
  const out = Buffer.allocUnsafe(length + 64);
  let n = 0;
  while (n < length) {
    const w = WORDS[rng.int(WORDS.length)];
    w.copy(out, n);
    n += w.length;
    const r = rng.int(24);
    if (r < 2) n += out.write(String(rng.int(100000)), n, 'latin1');
    out[n++] = r === 0 || r === 5 ? 0x0a : 0x20;
  }
  return out.subarray(0, length);
}

/** Writes the image at `file` (replacing it) and returns its map. */
export async function generateImage(file: string, spec: ImageSpec): Promise<BenchImage> {
  const rng = new Prng(spec.seed);
  const unit = spec.unit ?? 256 * 1024;
  const regions: Region[] = [];
  const fh = await fs.open(file, 'w+');
  try {
    await fh.truncate(spec.sizeBytes);
    let stream = 0;
    for (let off = 0; off < spec.sizeBytes; ) {
      let len = Math.min(spec.sizeBytes - off, unit * (1 + rng.int(16)));
      let kind = pick(rng.next());
      const sources = regions.filter((r) => r.kind === 'text' || r.kind === 'random');
      if (kind === 'duplicate' && sources.length === 0) kind = 'random';
      let data: Buffer | undefined;
      if (kind === 'zero') data = Buffer.alloc(len);
      else if (kind === 'text') data = textBytes(rng, len);
      else if (kind === 'random') data = randomBytes(spec.seed, stream++, len);
      else if (kind === 'duplicate') {
        const src = sources[rng.int(sources.length)];
        len = Math.min(src.length, spec.sizeBytes - off);
        data = Buffer.allocUnsafe(len);
        await fh.read(data, 0, len, src.offset);
      }
      if (data && kind !== 'hole') {
        await fh.write(data, 0, len, off);
        regions.push({ offset: off, length: len, kind });
      }
      off += len;
    }
  } finally {
    await fh.close();
  }
  return describe(file, spec.sizeBytes, regions);
}

function pick(x: number): RegionKind | 'hole' {
  let acc = 0;
  for (const [kind, share] of SHARES) if (x < (acc += share)) return kind;
  return 'hole';
}

/**
 * The 1% change set: `share` of the image's `blockSize` blocks (any block, allocated or a hole, as a
 * guest writes anywhere), each rewritten whole with new text-like or random data. Whole aligned
 * blocks, so "changed bytes" is exact and a block-level reader needs to read nothing else.
 */
export function changeSet(sizeBytes: number, blockSize: number, share: number, seed: number): Change[] {
  const rng = new Prng(seed);
  const blocks = Math.floor(sizeBytes / blockSize);
  const want = Math.max(1, Math.round(blocks * share));
  const chosen = new Set<number>();
  while (chosen.size < Math.min(want, blocks)) chosen.add(rng.int(blocks));
  return [...chosen]
    .sort((a, b) => a - b)
    .map((i, n) => ({ offset: i * blockSize, data: rng.int(2) === 0 ? textBytes(rng, blockSize) : randomBytes(seed, 1_000_000 + n, blockSize) }));
}

/**
 * A sparse copy of `src` at `file` with `changes` applied on top, `place` mapping each source
 * offset to the target's (identity for a same-size copy). Only allocated regions are copied, so
 * holes stay holes.
 */
export async function derivedImage(
  src: BenchImage,
  file: string,
  opts: { sizeBytes?: number; changes?: Change[]; pieceBytes?: number } = {},
): Promise<BenchImage> {
  const sizeBytes = opts.sizeBytes ?? src.sizeBytes;
  // Spreading: the source's pieces of `pieceBytes` land at an even stride over the larger image.
  const piece = opts.pieceBytes ?? src.sizeBytes;
  const stride = Math.floor(sizeBytes / Math.ceil(src.sizeBytes / piece) / 4096) * 4096;
  const place = (off: number): number => Math.floor(off / piece) * stride + (off % piece);
  const [from, to] = await Promise.all([fs.open(src.file, 'r'), fs.open(file, 'w+')]);
  const regions: Region[] = [];
  try {
    await to.truncate(sizeBytes);
    const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
    for (const r of src.regions) {
      for (let pos = r.offset; pos < r.offset + r.length; ) {
        const pieceEnd = (Math.floor(pos / piece) + 1) * piece;
        const n = Math.min(buf.length, r.offset + r.length - pos, pieceEnd - pos);
        await from.read(buf, 0, n, pos);
        await to.write(buf, 0, n, place(pos));
        addRegion(regions, { offset: place(pos), length: n, kind: r.kind });
        pos += n;
      }
    }
    for (const c of opts.changes ?? []) {
      await to.write(c.data, 0, c.data.length, c.offset);
      addRegion(regions, { offset: c.offset, length: c.data.length, kind: 'random' });
    }
  } finally {
    await Promise.all([from.close(), to.close()]);
  }
  return describe(file, sizeBytes, normalise(regions));
}

function addRegion(regions: Region[], r: Region): void {
  const last = regions.at(-1);
  if (last && last.kind === r.kind && last.offset + last.length === r.offset) last.length += r.length;
  else regions.push(r);
}

/** Sorted, non-overlapping regions (a change may land on or across earlier ones). */
function normalise(regions: Region[]): Region[] {
  const sorted = [...regions].sort((a, b) => a.offset - b.offset);
  const out: Region[] = [];
  for (const r of sorted) {
    const last = out.at(-1);
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ ...r });
  }
  return out;
}

function describe(file: string, sizeBytes: number, regions: Region[]): BenchImage {
  return { file, sizeBytes, dataBytes: regions.reduce((n, r) => n + r.length, 0), regions };
}

/** SHA-256 of the image as a reader sees it, reading only the regions (holes hash as zeros). */
export async function imageSha256({ file, sizeBytes, regions }: BenchImage): Promise<string> {
  const h = createHash('sha256');
  const zeros = Buffer.alloc(4 * 1024 * 1024);
  const buf = Buffer.allocUnsafe(zeros.length);
  const fh = await fs.open(file, 'r');
  const feedZeros = (n: number): void => {
    for (; n > 0; n -= zeros.length) h.update(zeros.subarray(0, Math.min(n, zeros.length)));
  };
  try {
    let pos = 0;
    for (const r of regions) {
      feedZeros(r.offset - pos);
      for (let p = r.offset; p < r.offset + r.length; p += buf.length) {
        const n = Math.min(buf.length, r.offset + r.length - p);
        await fh.read(buf, 0, n, p);
        h.update(buf.subarray(0, n));
      }
      pos = r.offset + r.length;
    }
    feedZeros(sizeBytes - pos);
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

/** SHA-256 of a whole file, read front to back (holes included), for a restored image. */
export async function fileSha256(file: string): Promise<string> {
  const h = createHash('sha256');
  const fh = await fs.open(file, 'r');
  const buf = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    for (;;) {
      const { bytesRead } = await fh.read(buf, 0, buf.length, null);
      if (bytesRead === 0) break;
      h.update(buf.subarray(0, bytesRead));
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}
