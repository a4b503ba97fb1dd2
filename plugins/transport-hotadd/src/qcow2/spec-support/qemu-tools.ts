import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { expect } from 'chai';
import { FerryError, type AllocationExtent, type DiskHandle } from '@ferry/core/plugin';

/**
 * Test support for the qcow2 specs: QEMU's own tools (Debian package qemu-utils) make the images and
 * are the oracles. `qemu-img convert -O raw` gives the bytes, `qemu-img map` the allocation.
 */

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const GiB = 1024 * MiB;

/** The tools the qcow2 specs need: specs skip naming the package without them (fail in CI). */
export const QEMU_TOOLS = { 'qemu-img': 'qemu-utils', 'qemu-io': 'qemu-utils' };

function run(tool: string, args: string[]): string {
  try {
    return execFileSync(tool, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${tool} ${args.join(' ')} failed: ${e.stderr || e.message}`);
  }
}

export function qemuImg(...args: string[]): string {
  return run('qemu-img', args);
}

/** Runs qemu-io commands (`write -P 0x11 0 64k`, `write -z ...`) against a qcow2 image. */
export function qemuIo(file: string, ...commands: string[]): void {
  run('qemu-io', ['-f', 'qcow2', ...commands.flatMap((c) => ['-c', c]), file]);
}

/** `qemu-img create -f qcow2` with `-o` options, and a backing file with its format when given. */
export function createQcow2(file: string, size: string, options: string[] = [], backing?: { file: string; format: string }): string {
  const o = options.length ? ['-o', options.join(',')] : [];
  const b = backing ? ['-b', backing.file, '-F', backing.format] : [];
  qemuImg('create', '-q', '-f', 'qcow2', ...o, ...b, file, size);
  return file;
}

/** The guest bytes as QEMU reads them. */
export function oracleBytes(image: string): Buffer {
  const out = `${image}.oracle.raw`;
  qemuImg('convert', '-O', 'raw', image, out);
  try {
    return fs.readFileSync(out);
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** The allocation as QEMU sees it, as zero/data extents, merged. */
export function oracleMap(image: string): AllocationExtent[] {
  const entries = JSON.parse(qemuImg('map', '--output=json', image)) as { start: number; length: number; data: boolean }[];
  return merge(entries.map((e) => ({ offset: e.start, length: e.length, kind: e.data ? 'data' : 'zero' })));
}

/** File offsets of the data clusters QEMU maps for an image (where reading them would read data). */
export function oracleHostRanges(image: string): { offset: number; length: number }[] {
  const entries = JSON.parse(qemuImg('map', '--output=json', image)) as { length: number; offset?: number; data: boolean }[];
  return entries.filter((e) => e.data && e.offset !== undefined).map((e) => ({ offset: e.offset!, length: e.length }));
}

export function virtualSize(image: string): number {
  return (JSON.parse(qemuImg('info', '--output=json', image)) as { 'virtual-size': number })['virtual-size'];
}

export function merge(extents: AllocationExtent[]): AllocationExtent[] {
  const out: AllocationExtent[] = [];
  for (const e of extents) {
    const last = out.at(-1);
    if (last && last.kind === e.kind && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Asks for block status front to back, as the core's reader does, until the whole disk is covered. */
export async function wholeStatus(handle: DiskHandle): Promise<AllocationExtent[]> {
  const out: AllocationExtent[] = [];
  for (let pos = 0; pos < handle.size; ) {
    const got = await handle.blockStatus!(pos, handle.size - pos);
    expect(got.length, `block status at ${pos}`).to.be.greaterThan(0);
    expect(got[0].offset).to.equal(pos);
    out.push(...got);
    pos = got.at(-1)!.offset + got.at(-1)!.length;
  }
  return merge(out);
}

/** Every byte of the disk, read in odd-sized pieces with four reads in flight. */
export async function readWhole(handle: DiskHandle, piece = 192 * KiB + 511): Promise<Buffer> {
  const out = Buffer.alloc(handle.size);
  const offsets: number[] = [];
  for (let o = 0; o < handle.size; o += piece) offsets.push(o);
  for (let i = 0; i < offsets.length; i += 4) {
    await Promise.all(
      offsets.slice(i, i + 4).map(async (o) => {
        const bytes = await handle.read(o, Math.min(piece, handle.size - o));
        Buffer.from(bytes).copy(out, o);
      }),
    );
  }
  return out;
}

/** Equality of two disks' bytes, naming the first differing offset when they differ. */
export function expectSameBytes(got: Buffer, want: Buffer, what: string): void {
  expect(got.length, `${what}: size`).to.equal(want.length);
  if (got.equals(want)) return;
  let at = 0;
  while (got[at] === want[at]) at++;
  expect.fail(`${what}: first difference at byte ${at} (got ${got[at]}, want ${want[at]})`);
}

/** Overwrites bytes of a file in place (to damage an image the way a bad disk or a hostile guest might). */
export function patchFile(file: string, offset: number, bytes: Buffer): void {
  const fd = fs.openSync(file, 'r+');
  try {
    fs.writeSync(fd, bytes, 0, bytes.length, offset);
  } finally {
    fs.closeSync(fd);
  }
}

export function u64(value: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  return b;
}

export async function rejection(p: Promise<unknown>): Promise<FerryError> {
  try {
    await p;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('expected a rejection');
}
