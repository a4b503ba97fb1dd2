import { execFileSync } from 'node:child_process';
import { chmodSync, closeSync, linkSync, copyFileSync, existsSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, readlinkSync, statSync, symlinkSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { Prng, mkntfsImage, ntfscp, runTool, sfdiskImage, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { initCerts } from '@ferry/core/remote/wire';
import { json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService } from './support/remote-services.js';

const MiB = 1024 * 1024;
const PART_START = MiB;
const PART_BYTES = 48 * MiB;
const DISK_BYTES = PART_START + PART_BYTES + MiB;

interface Entry {
  name: string;
  type: string;
  size: number;
  mode: number;
  modeString: string;
  uid: number;
  gid: number;
  mtime: string;
  target?: string;
}
interface Figures {
  blocks: number;
  bytes: number;
  blockSize: number;
  diskBlocks: number;
  diskDataBlocks: number;
}
interface FilesJson {
  restorePoint: string;
  scheme: string;
  partitions: { partition: number; start: number; size: number; type: string; fileSystem: string | null }[];
  partition?: number;
  entries?: Entry[];
  extracted?: { files: number; dirs: number; symlinks: number; bytesWritten: number; skipped: { path: string; code: string; reason: string }[] };
  read: Figures;
}

/** Finds a tool on PATH or in sbin (mkfs, sfdisk live in /usr/sbin, not always on a user's PATH). */
function sbin(name: string): string | undefined {
  for (const dir of [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin']) {
    if (dir && existsSync(path.join(dir, name))) return path.join(dir, name);
  }
  return undefined;
}

function makeTree(root: string, seed: number): void {
  const rng = new Prng(seed);
  mkdirSync(path.join(root, 'etc/nested/deeper'), { recursive: true });
  mkdirSync(path.join(root, 'data'));
  writeFileSync(path.join(root, 'etc/hostname'), 'web01\n');
  chmodSync(path.join(root, 'etc/hostname'), 0o600);
  writeFileSync(path.join(root, 'etc/nested/deeper/app.conf'), 'key = value\n'.repeat(500));
  chmodSync(path.join(root, 'etc/nested'), 0o750);
  chmodSync(path.join(root, 'etc/nested/deeper/app.conf'), 0o4755);
  linkSync(path.join(root, 'etc/hostname'), path.join(root, 'etc/hostname-hard'));
  symlinkSync('hostname', path.join(root, 'etc/name-link'));
  symlinkSync(`nested/deeper/${'x'.repeat(80)}`, path.join(root, 'etc/long-link'));
  symlinkSync('/etc/passwd', path.join(root, 'etc/absolute-link'));
  // Data the extraction of one small file must not read: 24 MiB of random bytes, and a file with holes.
  writeFileSync(path.join(root, 'data/random.bin'), rng.fill(Buffer.alloc(24 * MiB)));
  const fd = openSync(path.join(root, 'data/sparse.bin'), 'w');
  writeSync(fd, rng.fill(Buffer.alloc(100_000)), 0, 100_000, 0);
  writeSync(fd, rng.fill(Buffer.alloc(4096)), 0, 4096, 5 * MiB);
  closeSync(fd);
  let t = 1_600_000_000;
  for (const p of ['etc/hostname', 'etc/nested/deeper/app.conf', 'data/random.bin', 'data/sparse.bin', 'etc/nested/deeper', 'etc/nested', 'etc', 'data']) {
    utimesSync(path.join(root, p), t, t + 7);
    t += 86_400;
  }
}

/** Every file, folder and link under `root` as relative path → [type, mode, mtime s, content or target]. */
function snapshot(root: string, skip: string[] = []): Map<string, [string, number, number, string]> {
  const out = new Map<string, [string, number, number, string]>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(path.join(root, rel)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      if (skip.includes(r)) continue;
      const p = path.join(root, r);
      const st = lstatSync(p);
      if (st.isSymbolicLink()) out.set(r, ['link', 0, 0, readlinkSync(p)]);
      else if (st.isDirectory()) {
        out.set(r, ['dir', st.mode & 0o7777, Math.floor(st.mtimeMs / 1000), '']);
        walk(r);
      } else out.set(r, ['file', st.mode & 0o7777, Math.floor(st.mtimeMs / 1000), readFileSync(p).toString('base64')]);
    }
  };
  walk('');
  return out;
}

/** The byte ranges (at 4 KiB granularity) where two equally sized files differ. */
function changedExtents(a: string, b: string): { offset: number; length: number }[] {
  const A = readFileSync(a);
  const B = readFileSync(b);
  const out: { offset: number; length: number }[] = [];
  for (let o = 0; o < A.length; o += 4096) {
    if (A.subarray(o, o + 4096).equals(B.subarray(o, o + 4096))) continue;
    const last = out[out.length - 1];
    if (last && last.offset + last.length === o) last.length += 4096;
    else out.push({ offset: o, length: 4096 });
  }
  return out;
}

describe('ferry files: list and extract from ext4 in a GPT disk of a restore point', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-files-');
  const images = path.join(t.dir, 'images');
  const disk = path.join(images, 'vm.raw');
  const src = path.join(t.dir, 'src');
  const part = path.join(t.dir, 'part.img');
  let job: string;
  let firstPoint: string;
  const tools: Record<string, string> = {};

  const files = (...args: string[]): ReturnType<typeof runFerry> => runFerry(['files', job, '--vm', 'web01', '--disk', 'vm.raw', '--json', ...args]);

  before(async function () {
    const missing: Record<string, string> = {};
    for (const [tool, pkg] of [['mkfs.ext4', 'e2fsprogs'], ['debugfs', 'e2fsprogs'], ['sfdisk', 'fdisk']]) {
      const p = sbin(tool!);
      if (p) tools[tool!] = p;
      else missing[tool!] = pkg!;
    }
    skipForMissingTools(this, missing);
    mkdirSync(images);
    makeTree(src, 7);
    execFileSync(tools['mkfs.ext4']!, ['-q', '-F', '-d', src, part, `${PART_BYTES / 1024}k`], { stdio: 'ignore' });
    writeFileSync(disk, '');
    execFileSync('truncate', ['-s', String(DISK_BYTES), disk]);
    execFileSync(tools['sfdisk']!, ['-q', disk], { input: `label: gpt\nstart=${PART_START / 512}, size=${PART_BYTES / 512}, type=L, name=root\n` });
    execFileSync('dd', [`if=${part}`, `of=${disk}`, 'bs=1M', `seek=${PART_START / MiB}`, 'conv=notrunc,sparse', 'status=none']);
    job = writeJob(
      t.dir,
      [
        'job: files',
        `plugins: [${path.join(ROOT, 'test', 'fixtures', 'plugins')}]`,
        'source: { host: cbt-sim, datastore: ./images, vms: [ { name: web01, disks: [vm.raw] } ] }',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    firstPoint = json<{ disks: { restorePoint: string }[] }>(r).disks[0]!.restorePoint;
    copyFileSync(disk, path.join(t.dir, 'disk-0.raw'));
  });
  after(() => t.cleanup());

  it('lists the GPT partitions and finds ext4 in the first', async function () {
    const r = await files();
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson>(r);
    expect(j.scheme).to.equal('gpt');
    expect(j.partitions).to.have.length(1);
    expect(j.partitions[0]).to.include({ partition: 1, start: PART_START, size: PART_BYTES, type: 'linux', fileSystem: 'ext4' });
  });

  it('lists /etc as debugfs does, with modes, sizes, times and link targets of the source tree', async function () {
    const r = await files('--path', '/etc');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson>(r);
    expect(j.partition).to.equal(1);
    const dbg = execFileSync(tools['debugfs']!, ['-R', 'ls -p /etc', part], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    const expected = dbg
      .split('\n')
      .map((l) => /^\/(\d+)\/(\d+)\/\d+\/\d+\/(.*)\/(\d*)\/$/.exec(l.trim()))
      .filter((m): m is RegExpExecArray => !!m && m[3] !== '.' && m[3] !== '..')
      .map((m) => [m[3], parseInt(m[2]!, 8) & 0o7777, m[4] ? Number(m[4]) : 0]);
    const got = j.entries!.map((e) => [e.name, e.mode, e.type === 'dir' ? 0 : e.size]);
    expect(got).to.have.deep.members(expected);
    const host = j.entries!.find((e) => e.name === 'hostname')!;
    expect(host).to.include({ type: 'file', size: 6, mode: 0o600, modeString: '-rw-------' });
    expect(Date.parse(host.mtime)).to.equal(statSync(path.join(src, 'etc/hostname')).mtimeMs);
    expect(j.entries!.find((e) => e.name === 'long-link')!.target).to.equal(`nested/deeper/${'x'.repeat(80)}`);
    expect(j.entries!.find((e) => e.name === 'nested')!).to.include({ type: 'dir', mode: 0o750 });
  });

  it('extracts /etc and /data with content, modes, times and links; refuses the absolute link', async function () {
    const to = path.join(t.dir, 'out-all');
    mkdirSync(to);
    for (const p of ['/etc', '/data']) {
      const r = await files('--extract', p, '--to', to);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      const j = json<FilesJson>(r);
      if (p === '/etc') {
        expect(j.extracted!.skipped).to.deep.equal([{ path: '/etc/absolute-link', code: 'FS_UNSAFE_NAME', reason: j.extracted!.skipped[0]!.reason }]);
        expect(j.extracted!.symlinks).to.equal(2);
      }
    }
    expect(existsSync(path.join(to, 'etc/absolute-link'))).to.equal(false);
    // Two names of one inode come out as two names of one file.
    expect(statSync(path.join(to, 'etc/hostname-hard')).ino).to.equal(statSync(path.join(to, 'etc/hostname')).ino);
    const want = snapshot(src, ['etc/absolute-link']);
    const got = snapshot(to);
    expect([...got.keys()]).to.deep.equal([...want.keys()]);
    for (const [k, v] of want) expect(got.get(k), k).to.deep.equal(v);
    // The file with holes stays sparse.
    expect(statSync(path.join(to, 'data/sparse.bin')).blocks * 512).to.be.below(1 * MiB);
  });

  it('extracting one small file reads a few blocks of the disk, not all of them', async function () {
    const to = path.join(t.dir, 'out-one');
    mkdirSync(to);
    const r = await files('--extract', '/etc/nested/deeper/app.conf', '--to', to);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson>(r);
    expect(readFileSync(path.join(to, 'app.conf'))).to.deep.equal(readFileSync(path.join(src, 'etc/nested/deeper/app.conf')));
    expect(statSync(path.join(to, 'app.conf')).mode & 0o7777).to.equal(0o4755);
    expect(j.read.diskDataBlocks).to.be.above(90);
    expect(j.read.blocks, JSON.stringify(j.read)).to.be.at.least(1).and.at.most(8);
    expect(j.read.bytes).to.be.at.most(8 * j.read.blockSize);
  });

  it('refuses to overwrite an existing file without --force (RESTORE_TARGET_EXISTS), replaces it with', async function () {
    const to = path.join(t.dir, 'out-force');
    mkdirSync(to);
    writeFileSync(path.join(to, 'hostname'), 'precious');
    const r = await files('--extract', '/etc/hostname', '--to', to);
    expect(r.code).to.equal(2);
    expect(json<{ error: { code: string } }>(r).error.code).to.equal('RESTORE_TARGET_EXISTS');
    expect(readFileSync(path.join(to, 'hostname'), 'utf8')).to.equal('precious');
    const f = await files('--extract', '/etc/hostname', '--to', to, '--force');
    expect(f.code, f.stderr + f.stdout).to.equal(0);
    expect(readFileSync(path.join(to, 'hostname'), 'utf8')).to.equal('web01\n');
  });

  it('names a missing path and a missing partition with codes', async function () {
    const r = await files('--path', '/no/such');
    expect(r.code).to.equal(2);
    expect(json<{ error: { code: string } }>(r).error.code).to.equal('DISK_PATH_NOT_FOUND');
    const p = await files('--path', '/', '--partition', '3');
    expect(json<{ error: { code: string } }>(p).error.code).to.equal('DISK_PATH_NOT_FOUND');
  });

  it('reads through a repository service too (repository.server in the job)', async function () {
    const certs = path.join(t.dir, 'certs');
    await initCerts(certs);
    const service = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]);
    try {
      // Restores need no proxy: only the repository service is named.
      const remote = writeJob(
        t.dir,
        [
          'job: files-remote',
          'source: { host: file, datastore: ./images, vms: [ { name: web01, disks: [vm.raw] } ] }',
          `repository: { server: ${JSON.stringify(service.address)} }`,
          `certs: ${certs}`,
        ].join('\n'),
        'remote.yaml',
      );
      const to = path.join(t.dir, 'out-remote');
      mkdirSync(to);
      const r = await runFerry(['files', remote, '--vm', 'web01', '--disk', 'vm.raw', '--point', firstPoint, '--extract', '/etc/hostname', '--to', to, '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      expect(readFileSync(path.join(to, 'hostname'), 'utf8')).to.equal('web01\n');
      expect(json<FilesJson>(r).read.blocks).to.be.at.most(8);
    } finally {
      await service.stop();
    }
  });

  it('reads an incremental point: a changed file shows there, the first point keeps the old one', async function () {
    const newConf = path.join(t.dir, 'new.conf');
    writeFileSync(newConf, 'changed after the first backup\n');
    execFileSync(tools['debugfs']!, ['-w', '-R', `write ${newConf} /etc/added.conf`, part], { stdio: 'ignore' });
    execFileSync('dd', [`if=${part}`, `of=${disk}`, 'bs=1M', `seek=${PART_START / MiB}`, 'conv=notrunc', 'status=none']);
    writeFileSync(`${disk}.changes.json`, JSON.stringify({ since: firstPoint, extents: changedExtents(path.join(t.dir, 'disk-0.raw'), disk) }));
    const b = await runFerry(['backup', job, '--json']);
    expect(b.code, b.stdout + b.stderr).to.equal(0);
    expect(json<{ disks: { mode: string }[] }>(b).disks[0]!.mode).to.equal('incremental');
    const to = path.join(t.dir, 'out-incr');
    mkdirSync(to);
    const r = await files('--extract', '/etc/added.conf', '--to', to);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    expect(readFileSync(path.join(to, 'added.conf'), 'utf8')).to.equal('changed after the first backup\n');
    const old = json<FilesJson>(await files('--path', '/etc', '--point', firstPoint));
    expect(old.restorePoint).to.equal(firstPoint);
    expect(old.entries!.map((e) => e.name)).to.not.include('added.conf');
  });
});


describe('ferry files: NTFS (mkntfs + ntfscp) beside ext4 in an MBR disk', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-files-ntfs-');
  const images = path.join(t.dir, 'images');
  const disk = path.join(images, 'win.raw');
  const part = path.join(t.dir, 'ntfs.img');
  const src = path.join(t.dir, 'src');
  let job: string;

  const files = (...args: string[]): ReturnType<typeof runFerry> => runFerry(['files', job, '--vm', 'win01', '--disk', 'win.raw', '--json', ...args]);

  before(async function () {
    skipUnlessTools(this, { mkntfs: 'ntfs-3g', ntfscp: 'ntfs-3g', ntfsls: 'ntfs-3g', sfdisk: 'fdisk' });
    mkdirSync(images);
    mkdirSync(src);
    const rng = new Prng(11);
    writeFileSync(path.join(src, 'readme.txt'), 'hello from NTFS\r\n');
    writeFileSync(path.join(src, 'report.bin'), rng.fill(Buffer.alloc(3 * MiB + 123)));
    writeFileSync(path.join(src, 'empty.txt'), '');
    await mkntfsImage(part, 24 * MiB, { label: 'win' });
    for (const name of ['readme.txt', 'report.bin', 'empty.txt']) ntfscp(part, path.join(src, name), name);
    // Partition 2: a small ext4 with a file of the same name, to show both are read and told apart.
    const linuxSrc = path.join(t.dir, 'linux-src');
    mkdirSync(linuxSrc);
    writeFileSync(path.join(linuxSrc, 'readme.txt'), 'hello from ext4\n');
    const linuxPart = path.join(t.dir, 'ext4.img');
    const mkfs = sbin('mkfs.ext4');
    if (!mkfs) skipForMissingTools(this, { 'mkfs.ext4': 'e2fsprogs' });
    execFileSync(mkfs!, ['-q', '-F', '-d', linuxSrc, linuxPart, '8M'], { stdio: 'ignore' });
    await sfdiskImage(disk, 34 * MiB, `label: dos\nstart=2048, size=${(24 * MiB) / 512}, type=7\nstart=${(25 * MiB) / 512}, size=${(8 * MiB) / 512}, type=83\n`);
    execFileSync('dd', [`if=${part}`, `of=${disk}`, 'bs=1M', 'seek=1', 'conv=notrunc,sparse', 'status=none']);
    execFileSync('dd', [`if=${linuxPart}`, `of=${disk}`, 'bs=1M', 'seek=25', 'conv=notrunc,sparse', 'status=none']);
    job = writeJob(
      t.dir,
      [
        'job: files-ntfs',
        'source: { host: file, datastore: ./images, vms: [ { name: win01, disks: [win.raw] } ] }',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
  });
  after(() => t.cleanup());

  it('lists a path in each partition with a file system; --extract asks which one', async function () {
    const r = await files('--path', '/readme.txt');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson & { listings: { partition: number; fileSystem: string; entries: Entry[] }[] }>(r);
    expect(j.listings.map((l) => [l.partition, l.fileSystem, l.entries[0]!.size])).to.deep.equal([
      [1, 'ntfs', 17],
      [2, 'ext4', 16],
    ]);
    expect(j.entries).to.equal(undefined);
    const e = await files('--extract', '/readme.txt', '--to', t.dir);
    expect(e.code).to.equal(2);
    expect(json<{ error: { code: string; message: string } }>(e).error.message).to.include('--partition');
    const to = path.join(t.dir, 'out-p2');
    mkdirSync(to);
    const p2 = await files('--extract', '/readme.txt', '--to', to, '--partition', '2');
    expect(p2.code, p2.stderr + p2.stdout).to.equal(0);
    expect(readFileSync(path.join(to, 'readme.txt'), 'utf8')).to.equal('hello from ext4\n');
  });

  it('finds NTFS in the MBR partition and lists the root as ntfsls does', async function () {
    const r = await files('--path', '/', '--partition', '1');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson>(r);
    expect(j.scheme).to.equal('mbr');
    expect(j.partitions[0]).to.include({ partition: 1, start: MiB, type: 'ntfs', fileSystem: 'ntfs' });
    // ntfsls -l: "SIZE DATE TIME NAME" per file, system files left out.
    const expected = runTool('ntfsls', ['-l', part])
      .split('\n')
      .map((l) => /^\s*(\d+)\s+\S+\s+\d+\s+\S+\s+\d+\s+(.+)$/.exec(l))
      .filter((m): m is RegExpExecArray => !!m)
      .map((m) => [m[2], Number(m[1])]);
    expect(j.entries!.map((e) => [e.name, e.size])).to.have.deep.members(expected);
    expect(j.entries!.find((e) => e.name === 'readme.txt')).to.include({ type: 'file', mode: 0o644 });
  });

  it('extracts the files byte-identical with their modification times', async function () {
    const to = path.join(t.dir, 'out');
    mkdirSync(to);
    const r = await files('--extract', '/', '--to', to, '--partition', '1');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const j = json<FilesJson>(r);
    expect(j.extracted!.files).to.equal(3);
    const listing = json<FilesJson>(await files('--path', '/', '--partition', '1')).entries!;
    for (const name of ['readme.txt', 'report.bin', 'empty.txt']) {
      expect(readFileSync(path.join(to, name)).equals(readFileSync(path.join(src, name))), name).to.equal(true);
      // utimes takes seconds as a double: at today's dates that keeps about a microsecond.
      expect(statSync(path.join(to, name)).mtimeMs).to.be.closeTo(Date.parse(listing.find((e) => e.name === name)!.mtime), 0.01);
    }
    expect(readdirSync(to).sort()).to.deep.equal(['empty.txt', 'readme.txt', 'report.bin']);
  });
});
