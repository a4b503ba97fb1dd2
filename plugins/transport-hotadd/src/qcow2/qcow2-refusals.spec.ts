import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, type DiskHandle, type SourceDisk } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { HotaddTransport } from '../hotadd-transport.js';
import {
  createQcow2,
  KiB,
  MiB,
  patchFile,
  qemuImg,
  QEMU_TOOLS,
  qemuIo,
  readWhole,
  rejection,
  u64,
  wholeStatus,
} from './spec-support/qemu-tools.js';

/** File offset of the L2 table that L1 entry 0 points to. */
function firstL2Table(image: string): number {
  const bytes = fs.readFileSync(image);
  const l1 = Number(bytes.readBigUInt64BE(40));
  return Number(bytes.readBigUInt64BE(l1) & 0x00ff_ffff_ffff_fe00n);
}

function setIncompatible(image: string, bits: bigint): void {
  const now = fs.readFileSync(image).readBigUInt64BE(72);
  patchFile(image, 72, u64(now | bits));
}

// Damaged, hostile and unsupported images: each is refused with a coded error that names the image
// (and the file offset, where one is at fault), never a crash, a hang or a huge allocation.
describe('qcow2 through hot-add: corrupt and unsupported images', function () {
  this.timeout(30_000);
  let dir: string;
  let handles: DiskHandle[];
  const file = (name: string): string => path.join(dir, name);
  const disk = (image: string, format: string | undefined = 'qcow2'): SourceDisk => ({ name: 'vm1/disk0', path: image, format });
  const open = async (image: string): Promise<DiskHandle> => {
    const h = await new HotaddTransport().open(disk(image));
    handles.push(h);
    return h;
  };
  /** A 2 MiB image whose first 256 KiB hold data. */
  const plain = (name = 'a.qcow2'): string => {
    const image = createQcow2(file(name), '2M');
    qemuIo(image, 'write -P 0x11 0 256k');
    return image;
  };

  before(function () {
    skipUnlessTools(this, QEMU_TOOLS);
  });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-qcow2-bad-'));
    handles = [];
  });
  afterEach(async () => {
    for (const h of handles) await h.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  describe('corrupt metadata: TRANSPORT_READ_FAILED naming the image and the offset', () => {
    it('an L1 table offset past the end of the file', async () => {
      const image = plain();
      patchFile(image, 40, u64(0x4000_0000n));
      const err = await rejection(new HotaddTransport().open(disk(image)));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.include({ disk: 'vm1/disk0', file: image });
      expect(err.detail).to.contain(image).and.to.contain(String(0x4000_0000));
      const probe = await new HotaddTransport().probe(disk(image));
      expect(probe.ok).to.equal(false);
      expect(probe.reason).to.contain('l1_table_offset');
    });

    it('a file truncated inside its data: reads fail, naming the guest and file offsets', async () => {
      const image = plain();
      const size = fs.statSync(image).size;
      fs.truncateSync(image, size - 100 * KiB);
      const h = await open(image);
      const err = await rejection(readWhole(h));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.include({ disk: 'vm1/disk0', file: image });
      expect(err.where.offset).to.be.a('number');
      expect(err.detail).to.match(/file offset \d+/).and.to.contain('past the end');
    });

    it('a file truncated inside its metadata: at open, or at the first look-up of a lost L2 table', async () => {
      const image = plain();
      const l2 = firstL2Table(image);
      fs.truncateSync(image, l2 + 100);
      const h = await open(image);
      const err = await rejection(wholeStatus(h));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.include({ file: image, offset: 0 });
      expect(err.detail).to.contain(image).and.to.contain(`L2 table of L1 entry 0 at file offset ${l2}`).and.to.contain('past the end');
      fs.truncateSync(image, 50);
      expect((await rejection(new HotaddTransport().open(disk(image)))).detail).to.contain('too short');
    });

    it('an L2 entry pointing past the end of the file, found by block status without reading data', async () => {
      const image = plain();
      const l2 = firstL2Table(image);
      patchFile(image, l2 + 8, u64((1n << 63n) | 0x10_0000_0000n));
      const h = await open(image);
      for (const attempt of [wholeStatus(h), h.read(64 * KiB, 10)]) {
        const err = await rejection(attempt);
        expect(err.code).to.equal('TRANSPORT_READ_FAILED');
        expect(err.where).to.include({ file: image });
        expect(err.detail).to.contain(`guest offset ${64 * KiB}`).and.to.contain(String(0x10_0000_0000));
      }
    });

    it('an L1 entry pointing to an unaligned L2 table, and an L1 size beyond any sane bound', async () => {
      const image = plain();
      const l1 = Number(fs.readFileSync(image).readBigUInt64BE(40));
      patchFile(image, l1, u64(BigInt(firstL2Table(image) + 512)));
      const err = await rejection(open(image).then((h) => h.read(0, 1)));
      expect(err.detail).to.contain('unaligned');
      patchFile(image, 36, Buffer.from([0xff, 0xff, 0xff, 0xff]));
      const big = await rejection(new HotaddTransport().open(disk(image)));
      expect(big.code).to.equal('TRANSPORT_READ_FAILED');
      expect(big.detail).to.contain('more than 32 MiB');
    });

    it('a compressed cluster that does not inflate', async () => {
      const source = plain('source.qcow2');
      const image = file('c.qcow2');
      qemuImg('convert', '-c', '-O', 'qcow2', source, image);
      const entry = fs.readFileSync(image).readBigUInt64BE(firstL2Table(image));
      expect(entry >> 62n, 'the first cluster is compressed').to.equal(1n);
      patchFile(image, Number(entry & ((1n << 54n) - 1n)), Buffer.alloc(64, 0xff));
      const err = await rejection((await open(image)).read(0, 4096));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.where).to.include({ file: image, offset: 0 });
      expect(err.detail).to.contain('does not inflate');
    });

    it('a backing chain that loops back on itself', async () => {
      const a = createQcow2(file('a.qcow2'), '1M');
      createQcow2(file('b.qcow2'), '1M', [], { file: 'a.qcow2', format: 'qcow2' });
      qemuImg('rebase', '-u', '-b', 'b.qcow2', '-F', 'qcow2', a);
      const err = await rejection(new HotaddTransport().open(disk(a)));
      expect(err.code).to.equal('TRANSPORT_READ_FAILED');
      expect(err.detail).to.contain('loops').and.to.contain(file('b.qcow2')).and.to.contain(a);
      qemuImg('rebase', '-u', '-b', 'a.qcow2', '-F', 'qcow2', a);
      expect((await rejection(new HotaddTransport().open(disk(a)))).detail).to.contain('loops');
    });
  });

  describe('random damage', () => {
    it('bit flips anywhere in the metadata end in a coded error or a successful read, never anything else', async () => {
      const base = createQcow2(file('base.qcow2'), '1M', ['cluster_size=4k']);
      qemuIo(base, 'write -P 0x11 0 1M');
      const sources = [createQcow2(file('a.qcow2'), '1M', ['cluster_size=4k'], { file: 'base.qcow2', format: 'qcow2' })];
      qemuIo(sources[0], 'write -P 0x22 0 100k', 'write -z 200k 8k');
      sources.push(createQcow2(file('e.qcow2'), '1M', ['cluster_size=16k', 'extended_l2=on']));
      qemuIo(sources[1], 'write -P 0x22 0 100k', 'write -z 200k 8k', 'write -P 0x33 300k 1k');
      sources.push(file('c.qcow2'));
      qemuImg('convert', '-c', '-O', 'qcow2', '-o', 'cluster_size=4k', base, sources[2]);
      let seed = 7;
      const random = (n: number): number => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n;
      const outcomes = new Map<string, number>();
      for (const source of sources) {
        const original = fs.readFileSync(source);
        for (let i = 0; i < 60; i++) {
          const damaged = Buffer.from(original);
          for (let flips = 1 + random(4); flips > 0; flips--) damaged[random(Math.min(damaged.length, 96 * KiB))] ^= 1 << random(8);
          fs.writeFileSync(file('damaged.qcow2'), damaged);
          const outcome = await readEverything(file('damaged.qcow2'));
          outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
        }
      }
      expect([...outcomes.keys()]).to.include('TRANSPORT_READ_FAILED');
      expect([...outcomes.keys()].every((o) => ['ok', 'TRANSPORT_READ_FAILED', 'TRANSPORT_UNSUPPORTED_FORMAT'].includes(o)), [...outcomes].join()).to.equal(true);
    });

    /** Opens, asks block status for everything and reads everything; returns `ok` or the error code. */
    const readEverything = async (image: string): Promise<string> => {
      let h: DiskHandle | undefined;
      try {
        h = await new HotaddTransport().open(disk(image));
        await wholeStatus(h);
        await readWhole(h);
        return 'ok';
      } catch (err) {
        expect(err, String(err)).to.be.instanceOf(FerryError);
        return (err as FerryError).code;
      } finally {
        await h?.close();
      }
    };
  });

  describe('a missing backing file: TRANSPORT_UNAVAILABLE naming it', () => {
    it('names the backing file and the image that needs it', async () => {
      createQcow2(file('base.qcow2'), '1M');
      const top = createQcow2(file('top.qcow2'), '1M', [], { file: 'base.qcow2', format: 'qcow2' });
      fs.rmSync(file('base.qcow2'));
      const err = await rejection(new HotaddTransport().open(disk(top)));
      expect(err.code).to.equal('TRANSPORT_UNAVAILABLE');
      expect(err.where).to.include({ file: file('base.qcow2') });
      expect(err.detail).to.contain(file('base.qcow2')).and.to.contain(top).and.to.contain('ENOENT');
    });
  });

  describe('unsupported features: TRANSPORT_UNSUPPORTED_FORMAT naming the image and the feature', () => {
    const refused = async (image: string, feature: string): Promise<void> => {
      const err = await rejection(new HotaddTransport().open(disk(image)));
      expect(err.code, err.message).to.equal('TRANSPORT_UNSUPPORTED_FORMAT');
      expect(err.detail).to.contain(image).and.to.contain(feature);
      const probe = await new HotaddTransport().probe(disk(image));
      expect(probe).to.deep.equal({ ok: false, reason: err.detail });
    };

    it('the encryption field set (AES), and a real LUKS image', async () => {
      const image = plain();
      patchFile(image, 32, Buffer.from([0, 0, 0, 1]));
      await refused(image, 'encryption');
      const luks = file('luks.qcow2');
      // qemu-img times its PBKDF2 iterations by the thread's CPU time, which the kernel counts in
      // ticks: a round that got none is "Unable to get accurate CPU usage". Bounded retries.
      for (let attempt = 1; ; attempt++) {
        try {
          qemuImg('create', '-q', '-f', 'qcow2', '--object', 'secret,id=s0,data=ferry', '-o', 'encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10', luks, '1M');
          break;
        } catch (err) {
          if (attempt === 5 || !String(err).includes('Unable to get accurate CPU usage')) throw err;
        }
      }
      await refused(luks, 'LUKS');
    });

    it('the corrupt bit', async () => {
      const image = plain();
      setIncompatible(image, 2n);
      await refused(image, 'corrupt bit');
    });

    it('an external data file', async () => {
      const image = createQcow2(file('x.qcow2'), '1M', [`data_file=${file('x.data')}`]);
      await refused(image, `external data file (${file('x.data')})`);
    });

    it('zstd compression', async () => {
      await refused(createQcow2(file('z.qcow2'), '1M', ['compression_type=zstd']), 'zstd');
    });

    it('an unknown incompatible feature bit, named from the feature name table', async () => {
      const image = plain();
      const head = fs.readFileSync(image).subarray(0, 64 * KiB);
      // Rename the table's entry for incompatible bit 4 to a feature from the future, bit 9.
      const at = head.indexOf(Buffer.concat([Buffer.from([0, 4]), Buffer.from('extended L2')]));
      expect(at, 'the feature name table describes bit 4').to.be.greaterThan(0);
      patchFile(image, at, Buffer.concat([Buffer.from([0, 9]), Buffer.alloc(46)]));
      patchFile(image, at + 2, Buffer.from('time travel'));
      setIncompatible(image, 1n << 9n);
      await refused(image, 'bit 9 ("time travel")');
      setIncompatible(image, 1n << 40n);
      await refused(image, 'bit 40');
    });

    it('a version other than 2 and 3, clusters above 2 MiB, a virtual size above 2^53', async () => {
      const image = plain();
      patchFile(image, 4, Buffer.from([0, 0, 0, 4]));
      await refused(image, 'version 4');
      patchFile(image, 4, Buffer.from([0, 0, 0, 3]));
      patchFile(image, 20, Buffer.from([0, 0, 0, 22]));
      await refused(image, '2^22');
      patchFile(image, 20, Buffer.from([0, 0, 0, 16]));
      patchFile(image, 24, u64(1n << 60n));
      await refused(image, 'virtual size');
    });

    it('backing files of other formats or behind a protocol', async () => {
      createQcow2(file('base.qcow2'), '1M');
      const top = createQcow2(file('top.qcow2'), '1M', [], { file: 'base.qcow2', format: 'qcow2' });
      qemuImg('rebase', '-u', '-b', 'base.qcow2', '-F', 'vmdk', top);
      await refused(top, 'format vmdk');
      qemuImg('rebase', '-u', '-b', 'nbd://127.0.0.1:10809/x', '-F', 'raw', top);
      await refused(top, 'protocol');
    });
  });

  describe('declared format against the magic', () => {
    it('refuses a disk declared qcow2 that is not', async () => {
      const raw = file('disk.raw');
      fs.writeFileSync(raw, Buffer.alloc(MiB, 1));
      const err = await rejection(new HotaddTransport().open(disk(raw, 'qcow2')));
      expect(err.code).to.equal('TRANSPORT_UNSUPPORTED_FORMAT');
      expect(err.detail).to.contain('qcow2 magic');
    });

    it('refuses a disk declared raw that starts with the qcow2 magic, rather than follow a guest-written header', async () => {
      const image = plain();
      const err = await rejection(new HotaddTransport().open(disk(image, 'raw')));
      expect(err.code).to.equal('TRANSPORT_UNSUPPORTED_FORMAT');
      expect(err.detail).to.contain('declared raw');
    });

    it('reads a disk without a declared format as qcow2 by its magic', async () => {
      const image = plain();
      const probe = await new HotaddTransport().probe(disk(image, undefined));
      expect(probe).to.deep.equal({ ok: true, reason: `datastore path ${image} (qcow2) is readable from this proxy` });
    });
  });
});
