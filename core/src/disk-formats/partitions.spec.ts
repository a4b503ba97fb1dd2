import { spawnSync } from 'node:child_process';
import { mkdtemp, open, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { sfdiskImage } from '../testing/disk-images.js';
import { skipUnlessTools } from '../testing/test-skips.js';
import { crc32 } from '../util/checksums.js';
import { type DiskReader, openFileReader } from './disk-reader.js';
import { formatGuid } from './partition-types.js';
import { type PartitionTable, readPartitionTable } from './partitions.js';

const MiB = 1024 * 1024;

interface SfdiskJson {
  partitiontable: { label: string; id: string; partitions: { node: string; start: number; size: number; type: string; uuid?: string; name?: string; bootable?: boolean }[] };
}

function sfdiskJson(file: string): SfdiskJson {
  const r = spawnSync('sfdisk', ['-J', file], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`sfdisk -J failed: ${r.stderr}`);
  return JSON.parse(r.stdout) as SfdiskJson;
}

async function readTable(file: string): Promise<PartitionTable> {
  const f = await openFileReader(file);
  try {
    return await readPartitionTable(f.read, f.size);
  } finally {
    await f.close();
  }
}

async function expectInvalid(file: string): Promise<FerryError> {
  try {
    await readTable(file);
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('DISK_FORMAT_INVALID');
    return err as FerryError;
  }
  throw new Error('expected DISK_FORMAT_INVALID');
}

async function patch(file: string, offset: number, bytes: Uint8Array): Promise<void> {
  const h = await open(file, 'r+');
  try {
    await h.write(bytes, 0, bytes.length, offset);
  } finally {
    await h.close();
  }
}

/** Compares our table with what `sfdisk -J` says about the same image (sectors of 512 bytes). */
function expectSameAsSfdisk(table: PartitionTable, file: string): void {
  const oracle = sfdiskJson(file).partitiontable;
  expect(table.scheme).to.equal(oracle.label === 'dos' ? 'mbr' : 'gpt');
  expect(table.diskId).to.equal(oracle.id.replace(/^0x/, '').toLowerCase());
  const ours = table.partitions.map((p) => ({
    index: p.index,
    start: p.start / 512,
    size: p.size / 512,
    type: table.scheme === 'mbr' ? Number.parseInt(p.type, 16).toString(16) : p.type.toUpperCase(),
    uuid: p.uuid?.toUpperCase(),
    name: p.name || undefined,
    bootable: p.bootable || undefined,
  }));
  const theirs = oracle.partitions.map((p) => ({
    index: Number(/(\d+)$/.exec(p.node)![1]),
    start: p.start,
    size: p.size,
    type: p.type,
    uuid: p.uuid,
    name: p.name,
    bootable: p.bootable || undefined,
  }));
  expect(ours).to.deep.equal(theirs);
}

describe('partition tables (MBR, GPT) against sfdisk', function () {
  let dir: string;
  before(async function () {
    skipUnlessTools(this, { sfdisk: 'fdisk' });
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-parts-'));
  });
  after(async function () {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const mbrScript = [
    'label: dos',
    'unit: sectors',
    'start=2048, size=4096, type=83, bootable',
    'start=6144, size=20480, type=5',
    'start=8192, size=2048, type=82',
    'start=12288, size=4096, type=7',
    'start=18432, size=2048, type=83',
    'start=28672, size=2048, type=ef',
  ].join('\n');
  const gptScript = [
    'label: gpt',
    'start=2048, size=4096, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root fs"',
    'start=6144, size=2048, type=0657FD6D-A4AB-43C4-84E5-0933C84B4F4F, name="swap"',
    'start=8192, size=4096, type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7, name="Basic data"',
    'start=12288, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B',
  ].join('\n');

  it('reads an MBR with primary, extended and logical partitions as sfdisk does', async function () {
    const file = path.join(dir, 'mbr.img');
    await sfdiskImage(file, 16 * MiB, mbrScript);
    const table = await readTable(file);
    expectSameAsSfdisk(table, file);
    expect(table.partitions.map((p) => [p.index, p.typeName, Boolean(p.logical)])).to.deep.equal([
      [1, 'linux', false],
      [2, 'extended', false],
      [3, 'efi', false],
      [5, 'linux-swap', true],
      [6, 'ntfs', true],
      [7, 'linux', true],
    ]);
  });

  it('reads a GPT with names, uuids and type names as sfdisk does', async function () {
    const file = path.join(dir, 'gpt.img');
    await sfdiskImage(file, 16 * MiB, gptScript);
    const table = await readTable(file);
    expectSameAsSfdisk(table, file);
    expect(table.partitions.map((p) => p.typeName)).to.deep.equal(['linux', 'linux-swap', 'microsoft-basic-data', 'efi']);
    expect(table.partitions[0]!.name).to.equal('root fs');
    expect(table.warnings).to.deep.equal([]);
  });

  it('falls back to the backup GPT when the primary header or entry array is damaged, and fails when both are', async function () {
    const file = path.join(dir, 'gpt-bad.img');
    await sfdiskImage(file, 16 * MiB, gptScript);
    const good = await readTable(file);
    await patch(file, 512 + 40, Buffer.from([0x99])); // first usable LBA: header CRC no longer matches
    const table = await readTable(file);
    expect(table.partitions).to.deep.equal(good.partitions);
    expect(table.diskId).to.equal(good.diskId);
    expect(table.warnings.join()).to.match(/primary GPT unusable.*CRC-32/);

    await sfdiskImage(file, 16 * MiB, gptScript);
    await patch(file, 1024 + 56, Buffer.from('X')); // a name in the primary entry array
    expect((await readTable(file)).warnings.join()).to.match(/entry array.*CRC-32/);

    const backupHeader = 16 * MiB - 512;
    await patch(file, backupHeader, Buffer.from('NOT PART'));
    const err = await expectInvalid(file);
    expect(err.message).to.match(/neither the primary nor the backup/);
  });

  it('refuses a GPT whose entries are valid by CRC but overlap', async function () {
    const file = path.join(dir, 'gpt-overlap.img');
    await sfdiskImage(file, 16 * MiB, gptScript);
    const bytes = await readFile(file);
    for (const headerAt of [512, 16 * MiB - 512]) {
      const h = bytes.subarray(headerAt, headerAt + 92);
      const entries = Number(h.readBigUInt64LE(72)) * 512;
      bytes.writeBigUInt64LE(3000n, entries + 128 + 32); // entry 2 starts inside entry 1
      h.writeUInt32LE(crc32(bytes.subarray(entries, entries + 128 * h.readUInt32LE(80))), 88);
      h.writeUInt32LE(0, 16);
      h.writeUInt32LE(crc32(h), 16);
    }
    await writeFile(file, bytes);
    const err = await expectInvalid(file);
    expect(err.message).to.match(/overlap/);
  });

  it('refuses an MBR partition past the end of the disk', async function () {
    const file = path.join(dir, 'mbr-short.img');
    await sfdiskImage(file, 16 * MiB, mbrScript);
    await truncate(file, 8 * MiB);
    const err = await expectInvalid(file);
    expect(err.where.offset).to.be.a('number');
  });

  it('refuses an extended partition whose EBR chain loops', async function () {
    const file = path.join(dir, 'mbr-loop.img');
    await sfdiskImage(file, 16 * MiB, mbrScript);
    // The last EBR links back to the first one (relative LBA 0 of the extended partition).
    const lastEbr = (18432 - 2048) * 512;
    const link = Buffer.alloc(16);
    link[4] = 0x05;
    link.writeUInt32LE(0, 8);
    link.writeUInt32LE(2048, 12);
    await patch(file, lastEbr + 446 + 16, link);
    const err = await expectInvalid(file);
    expect(err.message).to.match(/loops/);
  });

  it('reports no table for a blank disk, a whole-disk file system boot sector or a bad boot flag', async function () {
    const file = path.join(dir, 'none.img');
    await writeFile(file, Buffer.alloc(MiB));
    expect((await readTable(file)).scheme).to.equal('none');
    const boot = Buffer.alloc(512);
    boot.write('NTFS    ', 3, 'latin1');
    boot[510] = 0x55;
    boot[511] = 0xaa;
    boot[446] = 0x12; // boot code, not a boot flag
    await patch(file, 0, boot);
    expect((await readTable(file)).scheme).to.equal('none');
    boot.write('MSWIN4.1', 3, 'latin1');
    await patch(file, 0, boot);
    expect((await readTable(file)).scheme).to.equal('none');
  });

  it('asks the reader only for ranges inside the disk', async function () {
    const file = path.join(dir, 'gpt-ranges.img');
    await sfdiskImage(file, 16 * MiB, gptScript);
    const f = await openFileReader(file);
    const asked: [number, number][] = [];
    const read: DiskReader = (o, l) => {
      asked.push([o, l]);
      return f.read(o, l);
    };
    try {
      await readPartitionTable(read, f.size);
    } finally {
      await f.close();
    }
    for (const [o, l] of asked) expect(o + l).to.be.at.most(16 * MiB);
    expect(asked.reduce((n, [, l]) => n + l, 0)).to.be.below(64 * 1024);
  });

  it('formats mixed-endian GUIDs', function () {
    const bytes = Buffer.from('6dfd5706aba4c44384e50933c84b4f4f', 'hex');
    expect(formatGuid(bytes)).to.equal('0657fd6d-a4ab-43c4-84e5-0933c84b4f4f');
  });
});
