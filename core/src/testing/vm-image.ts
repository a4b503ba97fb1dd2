import { promises as fs } from 'node:fs';

/**
 * Deterministic VM-like disk images for tests, the demo and the benchmark: holes, allocated zero
 * runs, text-like (compressible) data, random (incompressible) data and duplicates of earlier data,
 * in regions of random length, all from one seed.
 */
export interface VmImageOptions {
  sizeBytes: number;
  seed?: number;
  /** Share of the image left as holes (never written), 0..1. Default 0.3. */
  holes?: number;
  /** Granularity of regions; regions are 1..16 units long. Default 64 KiB. */
  unit?: number;
}

export interface VmImageStats {
  sizeBytes: number;
  dataBytes: number;
  holeBytes: number;
}

const WORDS = (
  'the of and to in is was for on that with as by at from kernel page block inode journal ext4 ' +
  'user root var log http GET POST 200 404 error warning info debug session backup restore ' +
  'snapshot volume disk sector cache buffer write read sync mount proc sys etc lib usr bin'
).split(' ');

/** A small, fast, seedable PRNG (mulberry32). */
export class Prng {
  constructor(private state: number) {}

  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) | 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  fill(buf: Buffer): Buffer {
    for (let i = 0; i + 4 <= buf.length; i += 4) buf.writeUInt32LE((this.next() * 4294967296) >>> 0, i);
    for (let i = buf.length & ~3; i < buf.length; i++) buf[i] = this.int(256);
    return buf;
  }
}

function textLike(rng: Prng, len: number): Buffer {
  const parts: string[] = [];
  let n = 0;
  while (n < len) {
    const w = WORDS[rng.int(WORDS.length)] + (rng.int(12) === 0 ? '\n' : ' ');
    parts.push(w);
    n += w.length;
  }
  return Buffer.from(parts.join('')).subarray(0, len);
}

/** Writes a new image at `file` (replacing it) and returns what it holds. */
export async function makeVmImage(file: string, opts: VmImageOptions): Promise<VmImageStats> {
  const rng = new Prng(opts.seed ?? 1);
  const unit = opts.unit ?? 64 * 1024;
  const holes = opts.holes ?? 0.3;
  const fh = await fs.open(file, 'w+');
  const written: { offset: number; length: number }[] = [];
  let dataBytes = 0;
  try {
    await fh.truncate(opts.sizeBytes);
    for (let off = 0; off < opts.sizeBytes; ) {
      const len = Math.min(opts.sizeBytes - off, unit * (1 + rng.int(16)));
      const kind = rng.next();
      let data: Buffer | undefined;
      if (kind < holes) data = undefined;
      else if (kind < holes + 0.05) data = Buffer.alloc(len);
      else if (kind < holes + 0.35) data = textLike(rng, len);
      else if (kind < holes + 0.55 && written.length > 0) {
        const src = written[rng.int(written.length)];
        data = Buffer.alloc(len);
        const { bytesRead } = await fh.read(data, 0, Math.min(len, src.length), src.offset);
        if (bytesRead < len) rng.fill(data.subarray(bytesRead));
      } else data = rng.fill(Buffer.allocUnsafe(len));
      if (data) {
        await fh.write(data, 0, len, off);
        written.push({ offset: off, length: len });
        dataBytes += len;
      }
      off += len;
    }
  } finally {
    await fh.close();
  }
  return { sizeBytes: opts.sizeBytes, dataBytes, holeBytes: opts.sizeBytes - dataBytes };
}

/** Overwrites `count` random `length`-byte ranges with new random data; returns their offsets. */
export async function changeVmImage(file: string, opts: { count: number; length?: number; seed?: number }): Promise<number[]> {
  const rng = new Prng(opts.seed ?? 2);
  const length = opts.length ?? 4096;
  const fh = await fs.open(file, 'r+');
  try {
    const { size } = await fh.stat();
    const offsets: number[] = [];
    for (let i = 0; i < opts.count; i++) {
      const off = Math.floor(rng.int(Math.max(1, Math.floor((size - length) / 4096)))) * 4096;
      await fh.write(rng.fill(Buffer.allocUnsafe(length)), 0, length, off);
      offsets.push(off);
    }
    return offsets;
  } finally {
    await fh.close();
  }
}

/** Byte-for-byte comparison of two files (or devices), streaming; returns the first differing offset or -1. */
export async function firstDifference(a: string, b: string, chunk = 4 * 1024 * 1024): Promise<number> {
  const [fa, fb] = await Promise.all([fs.open(a, 'r'), fs.open(b, 'r')]);
  try {
    const [sa, sb] = await Promise.all([fa.stat(), fb.stat()]);
    if (sa.size !== sb.size) return Math.min(sa.size, sb.size);
    const ba = Buffer.allocUnsafe(chunk);
    const bb = Buffer.allocUnsafe(chunk);
    for (let off = 0; off < sa.size; off += chunk) {
      const n = Math.min(chunk, sa.size - off);
      await Promise.all([fa.read(ba, 0, n, off), fb.read(bb, 0, n, off)]);
      if (!ba.subarray(0, n).equals(bb.subarray(0, n))) {
        for (let i = 0; i < n; i++) if (ba[i] !== bb[i]) return off + i;
      }
    }
    return -1;
  } finally {
    await Promise.all([fa.close(), fb.close()]);
  }
}
