import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { SourceDisk } from '../contracts/source-host.js';
import type { Transport } from '../contracts/transport.js';
import { FerryError } from '../errors.js';
import { skipBecause, skipUnlessTools, type ToolPackages } from './test-skips.js';
import { makeVmImage, Prng } from './vm-image.js';

export interface TransportUnderTest {
  transport: Transport;
  /** The disk as a source host would describe it (path, NBD export, ...). */
  disk: SourceDisk;
  /** Stops whatever serves the disk. */
  cleanup(): Promise<void>;
}

export interface ConformanceOptions {
  /**
   * Tools the suite needs (e.g. the server that exposes the disk): when one is missing, every case
   * is skipped (and counted), naming the tool and its Debian package; under CI each fails instead.
   */
  needs?: ToolPackages;
}

/**
 * The conformance suite every transport runs: `expose` makes the raw image at `file` readable
 * through the transport (open the file itself, or serve it over NBD, ...). A case for an optional
 * method the transport does not offer is skipped, each one counted on its own.
 */
export function runTransportConformance(name: string, expose: (file: string) => Promise<TransportUnderTest>, options: ConformanceOptions = {}): void {
  describe(`transport conformance: ${name}`, function () {
    let dir: string;
    let file: string;
    let content: Buffer;
    let t: TransportUnderTest;
    const size = 6 * 1024 * 1024 + 4096;

    before(async function () {
      if (options.needs) skipUnlessTools(this, options.needs);
      dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-transport-'));
      file = path.join(dir, 'disk.raw');
      await makeVmImage(file, { sizeBytes: size, seed: 5, holes: 0.4, unit: 64 * 1024 });
      content = readFileSync(file);
      t = await expose(file);
    });
    after(async function () {
      await t?.cleanup();
      if (dir) await rm(dir, { recursive: true, force: true }); // unset when `needs` skipped the suite
    });

    it('probe, when offered, says yes with a reason', async function () {
      if (!t.transport.probe) skipBecause(this, `${name} offers no probe`);
      const p = await t.transport.probe!(t.disk);
      assert.equal(p.ok, true, p.reason);
      assert.ok(p.reason.length > 0);
    });

    it('open reports the size and reads return exactly the bytes', async function () {
      const h = await t.transport.open(t.disk);
      try {
        assert.equal(h.size, size);
        const rng = new Prng(9);
        for (let i = 0; i < 50; i++) {
          const off = rng.int(size - 1);
          const len = 1 + rng.int(Math.min(300_000, size - off));
          assert.ok(Buffer.from(await h.read(off, len)).equals(content.subarray(off, off + len)), `read ${off}+${len}`);
        }
        assert.ok(Buffer.from(await h.read(size - 10, 10)).equals(content.subarray(size - 10)));
      } finally {
        await h.close();
      }
    });

    it('serves several reads in flight', async function () {
      const h = await t.transport.open(t.disk);
      try {
        const offs = Array.from({ length: 16 }, (_, i) => i * 256 * 1024);
        const got = await Promise.all(offs.map((o) => h.read(o, 256 * 1024)));
        got.forEach((g, i) => assert.ok(Buffer.from(g).equals(content.subarray(offs[i], offs[i] + 256 * 1024))));
      } finally {
        await h.close();
      }
    });

    it('readInto, when offered, fills exactly the caller\'s buffer with the bytes, several in flight, and refuses a range past the end', async function () {
      const h = await t.transport.open(t.disk);
      try {
        if (!h.readInto) skipBecause(this, `${name} offers no readInto`);
        const readInto = h.readInto!.bind(h);
        const rng = new Prng(11);
        const reads = Array.from({ length: 24 }, () => {
          const off = rng.int(size - 1);
          return { off, len: 1 + rng.int(Math.min(300_000, size - off)) };
        });
        // A view into a larger buffer that is not fresh: bytes around it must stay as they were.
        const bufs = reads.map(({ len }) => Buffer.alloc(len + 64, 0xee));
        await Promise.all(reads.map(({ off, len }, i) => readInto(off, bufs[i].subarray(32, 32 + len))));
        reads.forEach(({ off, len }, i) => {
          assert.ok(bufs[i].subarray(32, 32 + len).equals(content.subarray(off, off + len)), `readInto ${off}+${len}`);
          assert.ok(bufs[i].subarray(0, 32).every((b) => b === 0xee) && bufs[i].subarray(32 + len).every((b) => b === 0xee), `readInto ${off}+${len} wrote outside its buffer`);
        });
        await assert.rejects(readInto(size - 10, Buffer.alloc(20)), (err: unknown) => err instanceof FerryError && err.code === 'TRANSPORT_READ_FAILED');
      } finally {
        await h.close();
      }
    });

    it('a read past the end is TRANSPORT_READ_FAILED', async function () {
      const h = await t.transport.open(t.disk);
      try {
        await assert.rejects(h.read(size - 10, 20), (err: unknown) => err instanceof FerryError && err.code === 'TRANSPORT_READ_FAILED');
      } finally {
        await h.close();
      }
    });

    it('blockStatus, when offered, covers the range in order and calls zero only what reads as zero', async function () {
      const h = await t.transport.open(t.disk);
      try {
        if (!h.blockStatus) skipBecause(this, `${name} offers no blockStatus`);
        let pos = 0;
        let zeroBytes = 0;
        while (pos < size) {
          const ext = await h.blockStatus!(pos, size - pos);
          assert.ok(ext.length > 0);
          for (const e of ext) {
            assert.equal(e.offset, pos, 'extents are in order without gaps');
            assert.ok(e.length > 0 && e.offset + e.length <= size);
            if (e.kind === 'zero') {
              assert.ok(content.subarray(e.offset, e.offset + e.length).every((b) => b === 0), `zero extent ${e.offset}+${e.length} holds data`);
              zeroBytes += e.length;
            }
            pos += e.length;
          }
        }
        assert.ok(zeroBytes > 0, 'the test image has holes; blockStatus found none');
      } finally {
        await h.close();
      }
    });
  });
}
