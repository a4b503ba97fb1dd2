import { closeSync, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import type { AllocationExtent, DiskHandle } from '@ferry/core/plugin';
import { Prng, skipUnlessTools } from '@ferry/core/testing';
import { NbdTransport } from './nbd-transport.js';
import { run, startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

const KiB = 1024;
const MiB = 1024 * KiB;

interface MapEntry {
  start: number;
  length: number;
  data: boolean;
  zero: boolean;
}

/** `qemu-img map` as the oracle: a range is zero when it reads as zeros or holds no data. */
function oracle(file: string, format: string): AllocationExtent[] {
  const entries = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', format, file])) as MapEntry[];
  return merge(entries.map((e) => ({ offset: e.start, length: e.length, kind: e.zero || !e.data ? 'zero' : 'data' })));
}

function merge(extents: AllocationExtent[]): AllocationExtent[] {
  const out: AllocationExtent[] = [];
  for (const e of extents) {
    const last = out.at(-1);
    if (last && last.kind === e.kind && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Walks the disk front to back as the core's reader does, checking the contract on the way. */
async function layout(h: DiskHandle): Promise<AllocationExtent[]> {
  const all: AllocationExtent[] = [];
  for (let pos = 0, rounds = 0; pos < h.size; rounds++) {
    expect(rounds).to.be.lessThan(10_000);
    const got = await h.blockStatus!(pos, h.size - pos);
    expect(got[0].offset).to.equal(pos, 'answers start at the asked offset');
    for (const e of got) {
      expect(e.offset).to.equal(pos, 'extents are in order without gaps');
      expect(e.length).to.be.greaterThan(0);
      all.push(e);
      pos += e.length;
    }
    expect(pos).to.be.at.most(h.size);
  }
  return merge(all);
}

describe('NBD blockStatus (base:allocation) against qemu-img map', function () {
  this.timeout(20_000);
  let tmp: { dir: string; remove(): void };
  let server: RunningServer | undefined;
  let handle: DiskHandle | undefined;

  beforeEach(function () {
    skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils', 'qemu-img': 'qemu-utils', 'qemu-io': 'qemu-utils' });
    tmp = tempDir();
  });
  afterEach(async () => {
    await handle?.close();
    handle = undefined;
    await server?.stop();
    server = undefined;
    tmp?.remove();
  });

  async function open(file: string, format: string): Promise<DiskHandle> {
    const socket = path.join(tmp.dir, 'nbd.sock');
    server = await startQemuNbd(socket, file, { format, readOnly: true });
    handle = await new NbdTransport().open({ name: 'd', nbd: { address: `unix:${socket}`, exportName: '' } });
    return handle;
  }

  it('matches on a sparse raw file, and zero extents read as zeros', async () => {
    const file = path.join(tmp.dir, 'sparse.raw');
    const fd = openSync(file, 'w');
    try {
      ftruncateSync(fd, 16 * MiB);
      const rng = new Prng(21);
      for (const at of [0, 3 * MiB + 4096, 7 * MiB, 15 * MiB + 512 * KiB]) writeSync(fd, rng.fill(Buffer.alloc(200 * KiB)), 0, 200 * KiB, at);
    } finally {
      closeSync(fd);
    }
    const want = oracle(file, 'raw');
    const h = await open(file, 'raw');
    const got = await layout(h);
    expect(got).to.deep.equal(want);
    const content = readFileSync(file);
    for (const e of got.filter((x) => x.kind === 'zero')) {
      expect(content.subarray(e.offset, e.offset + e.length).every((b) => b === 0)).to.equal(true);
    }
    expect(got.some((e) => e.kind === 'zero') && got.some((e) => e.kind === 'data')).to.equal(true);
  });

  it('matches on a qcow2 file with data, zero clusters, written zeros and a backing file', async () => {
    const base = path.join(tmp.dir, 'base.qcow2');
    const top = path.join(tmp.dir, 'top.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', base, '8M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x11 6M 256k', base]);
    run('qemu-img', ['create', '-f', 'qcow2', '-b', base, '-F', 'qcow2', top]);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x22 0 64k', '-c', 'write -P 0x33 1M 192k', '-c', 'write -z 3M 128k', '-c', 'write -P 0 5M 64k', top]);
    const want = oracle(top, 'qcow2');
    const h = await open(top, 'qcow2');
    expect(await layout(h)).to.deep.equal(want);
    expect(want.filter((e) => e.kind === 'data').map((e) => e.offset)).to.deep.equal([0, MiB, 5 * MiB, 6 * MiB]);
    expect((await h.read(6 * MiB, 4)).every((b) => b === 0x11)).to.equal(true);
  });

  it('answers a range in the middle of an extent from the asked offset', async () => {
    const file = path.join(tmp.dir, 'mid.qcow2');
    run('qemu-img', ['create', '-f', 'qcow2', file, '4M']);
    run('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x44 1M 1M', file]);
    const h = await open(file, 'qcow2');
    expect(await h.blockStatus!(MiB + 100, 2 * MiB)).to.deep.equal([
      { offset: MiB + 100, length: MiB - 100, kind: 'data' },
      { offset: 2 * MiB, length: MiB + 100, kind: 'zero' },
    ]);
    expect(await h.blockStatus!(4 * MiB - 10, 1000)).to.deep.equal([{ offset: 4 * MiB - 10, length: 10, kind: 'zero' }]);
  });
});
