import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, constants, cpSync, existsSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';
import { flipBit, pointDisks, storedBlocks } from './support/repo-inspect.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

interface ErrorJson {
  error: { code: string; message: string };
}

const MiB = 1024 * 1024;
const DISK_BYTES = 8 * MiB + 4096;

function restore(job: string, to: string, ...extra: string[]): Promise<CliResult> {
  return runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--to', to, '--json', ...extra]);
}

/** Flips a bit in the stored block of the disk's middle; returns the offset of the first block that holds it. */
function damageMiddleBlock(repo: string, seed: number): number {
  const [disk] = pointDisks(repo);
  let i = Math.floor(disk.hashes.length / 2);
  while (!disk.hashes[i]) i++;
  const hash = disk.hashes[i]!;
  flipBit(storedBlocks(repo).find((b) => b.hash === hash)!, new Prng(seed));
  return disk.hashes.indexOf(hash) * disk.blockSize;
}

/** The first `n` bytes of a file or device. */
function head(file: string, n: number): Buffer {
  const fd = openSync(file, 'r');
  try {
    const buf = Buffer.alloc(n);
    for (let pos = 0; pos < n; ) {
      const got = readSync(fd, buf, pos, n - pos, pos);
      if (got === 0) break;
      pos += got;
    }
    return buf;
  } finally {
    closeSync(fd);
  }
}

describe('restore onto an existing file or device (--force)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-restore-target-');
  const image = path.join(t.dir, 'images', 'vm.raw');
  let job: string;
  let damagedJob: string;
  let damagedAt: number;

  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: DISK_BYTES, seed: 31, holes: 0.2 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'] }));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    // A copy of the repository with one damaged block in the middle of the disk: restores from it fail there.
    cpSync(path.join(t.dir, 'repo'), path.join(t.dir, 'damaged-repo'), { recursive: true });
    damagedAt = damageMiddleBlock(path.join(t.dir, 'damaged-repo'), 5);
    damagedJob = writeJob(t.dir, basicJob({ disks: ['vm.raw'], repo: './damaged-repo' }), 'damaged.yaml');
  });
  after(() => t.cleanup());

  it('refuses an existing file without --force (exit 2, RESTORE_TARGET_EXISTS) and leaves it byte for byte', async function () {
    const to = path.join(t.dir, 'precious.raw');
    const before = randomBytes(3 * MiB);
    writeFileSync(to, before);
    const r = await restore(job, to);
    expect(r.code, r.stderr).to.equal(2);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('RESTORE_TARGET_EXISTS');
    expect(error.message).to.include(to).and.to.include('--force');
    expect(readFileSync(to).equals(before), 'the file is unchanged').to.equal(true);
  });

  it('overwrites an existing (larger) file with --force: same size and content as the disk', async function () {
    const to = path.join(t.dir, 'overwrite.raw');
    writeFileSync(to, randomBytes(DISK_BYTES + 5 * MiB));
    const r = await restore(job, to, '--force');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    expect(statSync(to).size).to.equal(DISK_BYTES);
    expect(await firstDifference(image, to)).to.equal(-1);
  });

  it('a failed --force restore keeps the file and says what it holds now', async function () {
    const to = path.join(t.dir, 'kept.raw');
    writeFileSync(to, randomBytes(2 * MiB));
    const r = await restore(damagedJob, to, '--force');
    expect(r.code, r.stderr).to.equal(1);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('REPO_CORRUPT_OBJECT');
    expect(existsSync(to), 'the target is not deleted').to.equal(true);
    expect(statSync(to).size).to.equal(DISK_BYTES);
    expect(error.message).to.match(/was kept but truncated and partly overwritten/).and.to.include('its old contents are not kept');
    const reached = Number(/its first (\d+) bytes may hold restored data/.exec(error.message)?.[1]);
    expect(reached, error.message).to.be.at.least(damagedAt);
    // Everything before the damaged block was written before the restore stopped.
    expect(head(to, damagedAt).equals(head(image, damagedAt))).to.equal(true);
  });

  it('a failed restore to a new file removes that file, and nothing else in its folder', async function () {
    const dir = path.join(t.dir, 'new-target');
    mkdirSync(dir);
    const neighbour = path.join(dir, 'neighbour.raw');
    writeFileSync(neighbour, 'stays');
    const to = path.join(dir, 'fresh.raw');
    const r = await restore(damagedJob, to);
    expect(r.code, r.stderr).to.equal(1);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('REPO_CORRUPT_OBJECT');
    expect(error.message).to.include(`the partly written ${to}, which this restore created, was removed`);
    expect(existsSync(to)).to.equal(false);
    expect(readFileSync(neighbour, 'utf8')).to.equal('stays');
  });

  it('of two restores to one new path, one writes it and the other gets RESTORE_TARGET_EXISTS', async function () {
    const to = path.join(t.dir, 'raced.raw');
    const results = await Promise.all([restore(job, to), restore(job, to)]);
    const codes = results.map((r) => r.code).sort();
    expect(codes, results.map((r) => r.stdout + r.stderr).join('\n')).to.deep.equal([0, 2]);
    expect(json<ErrorJson>(results.find((r) => r.code === 2)!).error.code).to.equal('RESTORE_TARGET_EXISTS');
    expect(await firstDifference(image, to)).to.equal(-1);
  });
});

/**
 * Block-device targets on loop devices made here from temporary files (root, losetup and
 * /dev/loop-control needed; skipped with the reason otherwise). Every device attached is detached in
 * after().
 */
describe('restore onto a block device (loop device)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-restore-device-');
  const image = path.join(t.dir, 'images', 'vm.raw');
  const attached: string[] = [];
  let job: string;
  let big: string;
  let bigFile: string;
  let small: string;

  function attach(file: string): string {
    const dev = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
    attached.push(dev);
    return dev;
  }

  before(async function () {
    const missing =
      process.getuid?.() !== 0 ? 'not running as root' : !existsSync('/dev/loop-control') ? 'no /dev/loop-control' : undefined;
    let reason = missing;
    if (!reason) {
      try {
        execFileSync('losetup', ['--version'], { stdio: 'ignore' });
      } catch {
        reason = 'losetup is not installed';
      }
    }
    if (!reason) {
      // A filled backing file shows what the restore left alone past the disk's end.
      bigFile = path.join(t.dir, 'big.img');
      writeFileSync(bigFile, Buffer.alloc(10 * MiB, 0xab));
      writeFileSync(path.join(t.dir, 'small.img'), Buffer.alloc(4 * MiB));
      try {
        big = attach(bigFile);
        small = attach(path.join(t.dir, 'small.img'));
      } catch (err) {
        reason = `losetup cannot attach a loop device here: ${(err as Error).message.split('\n')[0]}`;
      }
    }
    if (reason) {
      console.warn(`      skipping the block-device restores: ${reason}`);
      this.skip();
    }
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: DISK_BYTES, seed: 32, holes: 0.3 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'] }));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
  });
  after(function () {
    for (const dev of attached) {
      try {
        execFileSync('losetup', ['-d', dev], { stdio: 'ignore' });
      } catch (err) {
        console.warn(`      could not detach ${dev}: ${(err as Error).message}`);
      }
    }
    t.cleanup();
  });

  it('refuses a device without --force (it always exists) and leaves it untouched', async function () {
    const r = await restore(job, big);
    expect(r.code, r.stderr).to.equal(2);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('RESTORE_TARGET_EXISTS');
    expect(error.message).to.include(big).and.to.include('block device').and.to.include('--force');
    expect(head(big, 10 * MiB).every((b) => b === 0xab)).to.equal(true);
  });

  it('refuses a device smaller than the disk, naming both sizes', async function () {
    const r = await restore(job, small, '--force');
    expect(r.code, r.stderr).to.equal(1);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('RESTORE_TARGET');
    expect(error.message).to.include(small).and.to.include(String(4 * MiB)).and.to.include(String(DISK_BYTES));
  });

  it('refuses a device something holds exclusively (as a mount does), saying it is mounted or in use', async function () {
    const fd = openSync(big, constants.O_RDWR | constants.O_EXCL);
    try {
      const r = await restore(job, big, '--force');
      expect(r.code, r.stderr).to.equal(1);
      const { error } = json<ErrorJson>(r);
      expect(error.code).to.equal('RESTORE_TARGET');
      expect(error.message).to.include(big).and.to.include('mounted or in use');
    } finally {
      closeSync(fd);
    }
    expect(head(big, 10 * MiB).every((b) => b === 0xab)).to.equal(true);
  });

  it('writes a large enough device with --force: the disk at its start (zeros written), its tail as it was', async function () {
    const r = await restore(job, big, '--force');
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    expect(json<{ sparse: boolean }>(r).sparse).to.equal(false);
    const dev = head(big, 10 * MiB);
    expect(dev.subarray(0, DISK_BYTES).equals(readFileSync(image))).to.equal(true);
    expect(dev.subarray(DISK_BYTES).every((b) => b === 0xab)).to.equal(true);
  });
});

/**
 * The same rules when a repository service streams the blocks (`repository.server`): the target is
 * opened when the block map arrives, and a refusal or a damaged block ends the request at once
 * instead of leaving the service waiting for credit.
 */
describe('restore through a repository service onto an existing file', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-restore-remote-');
  const image = path.join(t.dir, 'images', 'vm.raw');
  const services: ServiceProcess[] = [];
  let job: string;

  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    // 64 blocks, twice the service's window: more than it sends without being acknowledged.
    await makeVmImage(image, { sizeBytes: 16 * MiB, seed: 33, holes: 0 });
    const certs = path.join(t.dir, 'certs');
    await initCerts(certs);
    services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]));
    services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]));
    job = writeJob(t.dir, remoteJob({ server: services[1].address, proxies: [services[0].address], certs, disks: ['vm.raw'] }));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr + r.stdout).to.equal(0);
  });
  after(async function () {
    await Promise.all(services.map((s) => s.stop()));
    t.cleanup();
  });

  it('refuses the existing file without --force and writes it with --force', async function () {
    const to = path.join(t.dir, 'existing.raw');
    const before = randomBytes(MiB);
    writeFileSync(to, before);
    const refused = await restore(job, to);
    expect(refused.code, refused.stderr).to.equal(2);
    expect(json<ErrorJson>(refused).error.code).to.equal('RESTORE_TARGET_EXISTS');
    expect(readFileSync(to).equals(before)).to.equal(true);
    const forced = await restore(job, to, '--force');
    expect(forced.code, forced.stderr + forced.stdout).to.equal(0);
    expect(await firstDifference(image, to)).to.equal(-1);
  });

  it('a target that cannot be opened ends the request at once (the service stops waiting for credit)', async function () {
    this.timeout(60_000);
    const dir = path.join(t.dir, 'a-folder');
    mkdirSync(dir);
    const r = await restore(job, dir, '--force');
    expect(r.code, r.stderr).to.equal(1);
    const { error } = json<ErrorJson>(r);
    expect(error.code).to.equal('RESTORE_TARGET');
    expect(error.message).to.include('EISDIR');
  });

  it('a damaged block stops the restore: a new file is removed, an overwritten one kept and described', async function () {
    const [disk] = pointDisks(path.join(t.dir, 'repo'));
    flipBit(storedBlocks(path.join(t.dir, 'repo')).find((b) => b.hash === disk.hashes[1])!, new Prng(6));
    const fresh = path.join(t.dir, 'fresh.raw');
    const r1 = await restore(job, fresh);
    expect(r1.code, r1.stderr).to.equal(1);
    expect(json<ErrorJson>(r1).error.code).to.equal('REPO_CORRUPT_OBJECT');
    expect(json<ErrorJson>(r1).error.message).to.include('which this restore created, was removed');
    expect(existsSync(fresh)).to.equal(false);
    const to = path.join(t.dir, 'existing.raw');
    const r2 = await restore(job, to, '--force');
    expect(r2.code, r2.stderr).to.equal(1);
    const { error } = json<ErrorJson>(r2);
    expect(error.code).to.equal('REPO_CORRUPT_OBJECT');
    expect(existsSync(to)).to.equal(true);
    expect(error.message).to.include('was kept but truncated and partly overwritten');
  });
});
