import { readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import type { DiskHandle, Extent } from '@ferry/core/plugin';
import { makeVmImage, skipUnlessTools } from '@ferry/core/testing';
import { NbdClient } from './nbd-client.js';
import { NbdTransport } from './nbd-transport.js';
import { run, startNbdkit, startQemuNbd, tempDir, type RunningServer } from './test-support/nbd-servers.js';

// Multi-connection reading against real servers (the fake server covers the refusals): a whole
// VM-like disk read with `connections: 4`, the holes taken from block status and never read. The
// servers advertise NBD_FLAG_CAN_MULTI_CONN on a writable export, so the extra connections are
// opened for that flag, not for the read-only fallback.

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 64 * MiB;
const CONNECTIONS = 4;
const PIECE = MiB;
const IN_FLIGHT = 8;

/** The holes of a raw file as the filesystem reports them (`qemu-img map`), merged. */
function fileHoles(file: string): Extent[] {
  const map = JSON.parse(run('qemu-img', ['map', '--output=json', '-f', 'raw', file])) as { start: number; length: number; zero: boolean }[];
  return merge(map.filter((m) => m.zero).map((m) => ({ offset: m.start, length: m.length })));
}

function merge(extents: Extent[]): Extent[] {
  const out: Extent[] = [];
  for (const e of extents) {
    const last = out.at(-1);
    if (last && last.offset + last.length === e.offset) last.length += e.length;
    else out.push({ ...e });
  }
  return out;
}

/** Connected clients of the unix socket `socket`, as the kernel lists the server's accepted ends. */
function connectedClients(socket: string): number {
  // Columns: Num RefCount Protocol Flags Type St Inode Path; St 03 is SS_CONNECTED.
  return readFileSync('/proc/net/unix', 'utf8')
    .split('\n')
    .filter((line) => line.endsWith(` ${socket}`) && line.trim().split(/\s+/)[5] === '03').length;
}

async function until(what: string, test: () => boolean, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Counts reads per NbdClient (one per connection) while installed; the handle reads through readInto. */
function countReadsPerConnection(): { counts: Map<NbdClient, number>; restore(): void } {
  const original = NbdClient.prototype.readInto;
  const counts = new Map<NbdClient, number>();
  NbdClient.prototype.readInto = function (this: NbdClient, offset: number, into: Uint8Array): Promise<void> {
    counts.set(this, (counts.get(this) ?? 0) + 1);
    return original.call(this, offset, into);
  };
  return { counts, restore: () => void (NbdClient.prototype.readInto = original) };
}

/** The disk's zero extents from block status (whole range, in order, merged). */
async function zeroExtents(h: DiskHandle): Promise<Extent[]> {
  expect(h.blockStatus, 'the server agreed to base:allocation').to.be.a('function');
  const zeros: Extent[] = [];
  for (let pos = 0; pos < h.size; ) {
    const ext = await h.blockStatus!(pos, h.size - pos);
    for (const e of ext) {
      expect(e.offset, 'extents in order without gaps').to.equal(pos);
      if (e.kind === 'zero') zeros.push({ offset: e.offset, length: e.length });
      pos += e.length;
    }
  }
  return merge(zeros);
}

/** Reads every byte outside `zeros` in PIECE reads, IN_FLIGHT at a time; the holes stay zero. */
async function readAroundHoles(h: DiskHandle, zeros: Extent[]): Promise<Buffer> {
  const out = Buffer.alloc(h.size);
  const pieces: Extent[] = [];
  let pos = 0;
  for (const hole of [...zeros, { offset: h.size, length: 0 }]) {
    for (let off = pos; off < hole.offset; off += PIECE) pieces.push({ offset: off, length: Math.min(PIECE, hole.offset - off) });
    pos = hole.offset + hole.length;
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < pieces.length; i = next++) await h.readInto!(pieces[i].offset, out.subarray(pieces[i].offset, pieces[i].offset + pieces[i].length));
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  return out;
}

function firstDifference(a: Buffer, b: Buffer): number {
  for (let off = 0; off < a.length; off += 64 * KiB) {
    if (!a.subarray(off, off + 64 * KiB).equals(b.subarray(off, off + 64 * KiB))) {
      for (let i = off; ; i++) if (a[i] !== b[i]) return i;
    }
  }
  return -1;
}

describe(`NbdTransport reading with ${CONNECTIONS} connections from real servers`, function () {
  this.timeout(60_000);
  let tmp: { dir: string; remove(): void } | undefined;
  let file: string;
  let image: Buffer;
  let holes: Extent[];

  before(async function () {
    skipUnlessTools(this, { 'qemu-img': 'qemu-utils' });
    tmp = tempDir('ferry-nbd-multi-');
    file = path.join(tmp.dir, 'disk.raw');
    const stats = await makeVmImage(file, { sizeBytes: SIZE, seed: 23, holes: 0.4, unit: 256 * KiB });
    image = readFileSync(file);
    holes = fileHoles(file);
    const holeBytes = holes.reduce((n, e) => n + e.length, 0);
    expect(holeBytes, 'the filesystem keeps the image sparse').to.be.within(stats.holeBytes / 2, stats.holeBytes);
  });
  after(() => tmp?.remove());

  /**
   * Opens the disk with CONNECTIONS connections and reads it whole around its holes; checks the
   * bytes, the holes, that the server held CONNECTIONS clients, and that every one carried reads.
   */
  async function readWholeDisk(socket: string): Promise<void> {
    const address = `unix:${socket}`;
    const probe = await NbdClient.connect({ address, exportName: '' });
    expect([probe.canMultiConn, probe.readOnly], 'multi-conn on a writable export').to.deep.equal([true, false]);
    await probe.close();
    await until('the probe connection to go', () => connectedClients(socket) === 0);

    const spy = countReadsPerConnection();
    const h = await new NbdTransport({ connections: CONNECTIONS }).open({ name: 'disk.raw', nbd: { address, exportName: '' } });
    try {
      expect(connectedClients(socket), 'connections the server holds').to.equal(CONNECTIONS);
      const zeros = await zeroExtents(h);
      expect(zeros, 'zero extents = the holes of the file').to.deep.equal(holes);
      const got = await readAroundHoles(h, zeros);
      expect(firstDifference(got, image), 'first byte that differs from the image').to.equal(-1);
    } finally {
      spy.restore();
      await h.close();
    }
    const perConnection = [...spy.counts.values()];
    expect(perConnection, `reads per connection: ${perConnection.join(', ')}`).to.have.length(CONNECTIONS);
    expect(Math.min(...perConnection)).to.be.greaterThan(0);
  }

  describe(`qemu-nbd --shared=${CONNECTIONS}`, () => {
    let server: RunningServer | undefined;
    before(async function () {
      skipUnlessTools(this, { 'qemu-nbd': 'qemu-utils' });
      server = await startQemuNbd(path.join(tmp!.dir, 'qemu.sock'), file, { shared: CONNECTIONS });
    });
    after(async () => server?.stop());

    it('reads the whole disk byte for byte over every connection, holes from base:allocation unread', async () => {
      await readWholeDisk(path.join(tmp!.dir, 'qemu.sock'));
    });
  });

  describe('nbdkit file plugin (with the log filter)', () => {
    let server: RunningServer | undefined;
    let log: string;
    before(async function () {
      skipUnlessTools(this, { nbdkit: 'nbdkit' });
      log = path.join(tmp!.dir, 'nbdkit.log');
      server = await startNbdkit(path.join(tmp!.dir, 'nbdkit.sock'), ['file', file, `logfile=${log}`], ['--filter=log']);
    });
    after(async () => server?.stop());

    it('reads the whole disk byte for byte, and the server logs reads on every connection', async () => {
      await readWholeDisk(path.join(tmp!.dir, 'nbdkit.sock'));
      await server!.stop(); // the log is complete once nbdkit has exited
      const readers = new Set([...readFileSync(log, 'utf8').matchAll(/connection=(\d+) Read /g)].map((m) => m[1]));
      expect(readers.size, `connections that logged reads: ${[...readers].join(', ')}`).to.equal(CONNECTIONS);
    });
  });
});
