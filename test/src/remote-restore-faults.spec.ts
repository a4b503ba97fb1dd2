import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { startTcpRelay, type TcpRelay } from '@ferry/core/remote/wire/testing';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startMessageRelay } from './support/message-relay.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

interface RestoreJson {
  restorePoint: string;
  bytesWritten: number;
  reconnects?: number;
  resentBlocks?: number;
}

/** The repository service's restore window (blocks sent ahead of what the client wrote), its default. */
const WINDOW = 32;
const MiB = 1024 * 1024;

/**
 * `ferry restore` through a repository service over a connection that drops: a TCP relay between the
 * CLI and the service cuts it (mid-frame, several times), and a message-level relay that loses one
 * block stands in for a faulty service.
 */
describe('remote restore: dropped connections and missing blocks', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-remote-restore-');
  const images = path.join(t.dir, 'images');
  const certs = path.join(t.dir, 'certs');
  const image = path.join(images, 'big.raw');
  let proxy: ServiceProcess;
  let repo: ServiceProcess;
  let relay: TcpRelay | undefined;

  before(async function () {
    mkdirSync(images);
    await initCerts(certs);
    await makeVmImage(image, { sizeBytes: 48 * MiB, seed: 31, holes: 0.05 });
    proxy = await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]);
    repo = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]);
    const job = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [proxy.address], certs, disks: ['big.raw'] }));
    const r = await runFerry(['backup', job, '--json']);
    expect(json<{ status: string }>(r).status, r.stderr).to.equal('success');
  });

  after(async function () {
    await relay?.close();
    await Promise.all([proxy?.stop(), repo?.stop()]);
    t.cleanup();
  });

  it('resumes a restore whose connection is cut three times mid-frame: byte-identical, reconnects and resent blocks reported', async function () {
    relay = await startTcpRelay({ target: repo.address });
    // 7 MiB relayed per round: each cut lands inside a block frame (blocks are 256 KiB frames)
    relay.cutAfter(7 * MiB + 12_345, 3);
    const job = writeJob(t.dir, remoteJob({ server: relay.address, proxies: [proxy.address], certs, disks: ['big.raw'] }), 'relay.yaml');
    const to = path.join(t.dir, 'relay.restored.raw');
    const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--to', to, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const report = json<RestoreJson>(r);
    expect(relay.cuts).to.equal(3);
    expect(report.reconnects).to.equal(3);
    expect(report.resentBlocks).to.be.greaterThan(0);
    expect(report.resentBlocks).to.be.at.most(WINDOW * 3);
    expect(await firstDifference(to, image)).to.equal(-1);
    await relay.close();
    relay = undefined;
  });

  it('reports no reconnects on an undisturbed restore', async function () {
    const job = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [proxy.address], certs, disks: ['big.raw'] }), 'direct.yaml');
    const to = path.join(t.dir, 'direct.restored.raw');
    const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--to', to, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const report = json<RestoreJson>(r);
    expect(report.reconnects).to.equal(0);
    expect(report.resentBlocks).to.equal(0);
    expect(await firstDifference(to, image)).to.equal(-1);
  });

  it('fails, naming the disk and offset, when the service ends the restore with a block of the map never sent', async function () {
    // a service that skips block 37: the relay drops that one message of the stream
    const lossy = await startMessageRelay({
      target: repo.address,
      certs,
      as: 'repository',
      towardsTarget: 'server',
      alter: (m, dir) => (dir === 'fromTarget' && m.type === 'restore.block' && Number(m.header?.i) === 37 ? undefined : m),
    });
    try {
      const job = writeJob(t.dir, remoteJob({ server: lossy.address, proxies: [proxy.address], certs, disks: ['big.raw'] }), 'lossy.yaml');
      const to = path.join(t.dir, 'lossy.restored.raw');
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--to', to, '--json']);
      expect(lossy.dropped).to.equal(1);
      expect(r.code, r.stdout).to.not.equal(0);
      const err = JSON.parse(r.stdout || r.stderr) as { error?: { code: string; message: string; where?: { disk?: string; offset?: number } } };
      expect(err.error?.code, r.stdout + r.stderr).to.equal('RESTORE_INCOMPLETE');
      expect(err.error?.where?.disk).to.equal('big.raw');
      expect(err.error?.where?.offset).to.equal(37 * 256 * 1024);
    } finally {
      await lossy.close();
    }
  });
});
