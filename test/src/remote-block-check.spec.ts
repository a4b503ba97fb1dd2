import { createHash } from 'node:crypto';
import { mkdirSync, openSync, readSync, closeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startMessageRelay } from './support/message-relay.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';
import { storedBlocks } from './support/repo-inspect.js';

interface ReportJson {
  status: string;
  disks: { disk: string; status: string; error?: { code: string; message: string; where: { vm?: string; disk?: string; offset?: number; host?: string } } }[];
  vms: { vm: string; status: string; restorePoint: string | null }[];
}

const KiB = 1024;
const MiB = 1024 * KiB;
/** The block size `remoteJob` sets. */
const BLOCK = 256 * KiB;

/** SHA-256 of every block of an image (undefined: an all-zero block). */
function blockHashes(file: string, sizeBytes: number): (string | undefined)[] {
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(BLOCK);
  const out: (string | undefined)[] = [];
  try {
    for (let off = 0; off < sizeBytes; off += BLOCK) {
      const n = readSync(fd, buf, 0, BLOCK, off);
      const b = buf.subarray(0, n);
      out.push(b.every((x) => x === 0) ? undefined : createHash('sha256').update(b).digest('hex'));
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

/**
 * The repository service does not take a proxy's word for a block's id: a proxy (a message-level
 * relay in front of a real one) that names one new block by another block's SHA-256 fails the disk
 * with REMOTE_BLOCK_MISMATCH, and nothing is stored under that id, so dedup stays sound for others.
 */
describe('remote data movers: the repository service checks the blocks a proxy sends', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-remote-check-');
  const images = path.join(t.dir, 'images');
  const certs = path.join(t.dir, 'certs');
  const repoDir = path.join(t.dir, 'repo');
  let proxy: ServiceProcess;
  let repo: ServiceProcess;

  before(async function () {
    mkdirSync(images);
    await initCerts(certs);
    await makeVmImage(path.join(images, 'a.raw'), { sizeBytes: 8 * MiB, seed: 41, holes: 0.1 });
    await makeVmImage(path.join(images, 'b.raw'), { sizeBytes: 8 * MiB, seed: 42, holes: 0.1 });
    proxy = await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]);
    repo = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', repoDir]);
  });

  after(async function () {
    await Promise.all([proxy?.stop(), repo?.stop()]);
    t.cleanup();
  });

  it('refuses a block stored under another block\'s hash (naming proxy, VM, disk, offset), stores nothing under it, and a later honest backup of that content restores', async function () {
    const a = blockHashes(path.join(images, 'a.raw'), 8 * MiB);
    const b = blockHashes(path.join(images, 'b.raw'), 8 * MiB);
    const lieAt = a.findIndex((h) => h !== undefined);
    const victim = b.find((h) => h !== undefined && !a.includes(h))!;
    expect(lieAt).to.be.at.least(0);
    expect(victim).to.be.a('string');

    // A proxy that sends block `lieAt` of vm-a under the hash of a block of vm-b.
    const liar = await startMessageRelay({
      target: proxy.address,
      certs,
      as: 'proxy',
      towardsTarget: 'repository',
      alter: (m, dir) => (dir === 'fromTarget' && m.type === 'block' && Number(m.header?.i) === lieAt ? { ...m, header: { ...m.header, h: victim } } : m),
    });
    try {
      const jobA = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [liar.address], certs, disks: ['a.raw'], vm: 'vm-a' }), 'a.yaml');
      const r = await runFerry(['backup', jobA, '--json']);
      const report = json<ReportJson>(r);
      expect(liar.altered).to.equal(1);
      expect(r.code).to.equal(1);
      expect(report.status).to.equal('failed');
      expect(report.vms[0].restorePoint).to.equal(null);
      const err = report.disks[0].error;
      expect(err?.code, JSON.stringify(report.disks[0])).to.equal('REMOTE_BLOCK_MISMATCH');
      expect(err?.where).to.deep.include({ vm: 'vm-a', disk: 'a.raw', offset: lieAt * BLOCK, host: liar.address });
    } finally {
      await liar.close();
    }
    expect(storedBlocks(repoDir).map((s) => s.hash)).to.not.include(victim);

    const jobB = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [proxy.address], certs, disks: ['b.raw'], vm: 'vm-b' }), 'b.yaml');
    const rb = json<ReportJson>(await runFerry(['backup', jobB, '--json']));
    expect(rb.status, JSON.stringify(rb.disks[0].error)).to.equal('success');
    expect(storedBlocks(repoDir).map((s) => s.hash)).to.include(victim);
    const to = path.join(t.dir, 'b.restored.raw');
    const rr = await runFerry(['restore', jobB, '--vm', 'vm-b', '--disk', 'b.raw', '--to', to]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(to, path.join(images, 'b.raw'))).to.equal(-1);
  });

  it('still backs up and restores honestly sent blocks through the check', async function () {
    const jobA = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [proxy.address], certs, disks: ['a.raw'], vm: 'vm-a' }), 'a-honest.yaml');
    const r = json<ReportJson>(await runFerry(['backup', jobA, '--json']));
    expect(r.status, JSON.stringify(r.disks[0].error)).to.equal('success');
    const to = path.join(t.dir, 'a.restored.raw');
    const rr = await runFerry(['restore', jobA, '--vm', 'vm-a', '--disk', 'a.raw', '--to', to]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(to, path.join(images, 'a.raw'))).to.equal(-1);
  });
});
