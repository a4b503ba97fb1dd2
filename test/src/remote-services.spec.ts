import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

interface DiskJson {
  disk: string;
  status: string;
  transport: string;
  proxy: string;
  reconnects: number;
  bytesTransferred: number;
  restorePoint: string;
  blocks: { total: number; new: number; deduped: number };
  stages: { stage: string; busyMs: number }[];
  bottleneck: string | null;
}
interface ReportJson {
  status: string;
  disks: DiskJson[];
  stages: { stage: string }[];
  bottleneck: string | null;
  reconnects: number;
  error?: { code: string; message: string };
}

/**
 * The data movers as separate processes on loopback: two `ferry proxy serve`, one `ferry repository
 * serve`, and the CLI running jobs against them; VM data goes proxy → repository service only.
 */
describe('remote data movers: proxy and repository services as processes', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-remote-');
  const MiB = 1024 * 1024;
  const images = path.join(t.dir, 'images');
  const certs = path.join(t.dir, 'certs');
  const services: ServiceProcess[] = [];
  let job: string;
  let first: ReportJson;

  before(async function () {
    mkdirSync(images);
    await initCerts(certs);
    await makeVmImage(path.join(images, 'web01.raw'), { sizeBytes: 24 * MiB, seed: 11 });
    await makeVmImage(path.join(images, 'web01-data.raw'), { sizeBytes: 8 * MiB + 4096, seed: 12 });
    copyFileSync(path.join(images, 'web01.raw'), path.join(t.dir, 'web01.first.raw'));
    const proxyArgs = ['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs];
    services.push(await startService(proxyArgs), await startService([...proxyArgs, '--task-slots', '1']));
    services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]));
    job = writeJob(t.dir, remoteJob({ server: services[2].address, proxies: [services[0].address, services[1].address], certs, disks: ['web01.raw', 'web01-data.raw'] }));
  });

  after(async function () {
    await Promise.all(services.map((s) => s.stop()));
    t.cleanup();
  });

  it('backs up through the services, spreading the disks over the proxies, with stage busy times and a bottleneck', async function () {
    const r = await runFerry(['backup', job, '--json']);
    first = json<ReportJson>(r);
    expect(first.status, r.stderr + JSON.stringify(first.error)).to.equal('success');
    expect(first.disks.map((d) => d.proxy)).to.deep.equal([services[0].address, services[1].address]);
    for (const d of first.disks) {
      expect(d.transport).to.equal('hotadd');
      expect(d.reconnects).to.equal(0);
      expect(d.bytesTransferred).to.be.greaterThan(0);
      expect(d.stages.map((s) => s.stage)).to.include.members(['source read', 'processing', 'network', 'target write']);
      expect(d.bottleneck).to.be.a('string');
    }
    expect(first.stages.map((s) => s.stage)).to.include('network');
    expect(first.bottleneck).to.be.a('string');
    expect(first.reconnects).to.equal(0);
  });

  it('runs again after changes: only new blocks cross the pipe, and both points restore byte-identical and sparse', async function () {
    await changeVmImage(path.join(images, 'web01.raw'), { count: 3, seed: 5 });
    const r = await runFerry(['backup', job, '--json']);
    const second = json<ReportJson>(r);
    expect(second.status, r.stderr).to.equal('success');
    const d = second.disks[0];
    expect(d.blocks.new).to.be.within(1, 6);
    expect(d.blocks.deduped).to.be.greaterThan(d.blocks.total / 2);
    expect(second.disks[1].bytesTransferred).to.equal(0, 'an unchanged disk sends hashes only');
    for (const [point, source] of [
      [first.disks[0].restorePoint, path.join(t.dir, 'web01.first.raw')],
      [d.restorePoint, path.join(images, 'web01.raw')],
    ]) {
      const to = path.join(t.dir, `restored-${point}.raw`);
      const rr = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--point', point, '--to', to, '--json']);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(json<{ sparse: boolean }>(rr).sparse).to.equal(true);
      expect(await firstDifference(to, source)).to.equal(-1);
    }
    const list = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    expect(list.restorePoints.map((p) => p.id)).to.have.members([first.disks[0].restorePoint, d.restorePoint]);
  });

  it('refuses a backup server with a certificate of another CA (PIPE_AUTH) and keeps serving the others', async function () {
    const other = path.join(t.dir, 'other-certs');
    await initCerts(other);
    const bad = writeJob(t.dir, remoteJob({ server: services[2].address, proxies: [services[0].address], certs: other, disks: ['web01.raw'] }), 'bad.yaml');
    const r = await runFerry(['backup', bad, '--json']);
    expect(r.code).to.equal(1);
    expect(json<ReportJson>(r).error?.code).to.equal('PIPE_AUTH');
    expect(services[2].stderr()).to.match(/refused/);
    const list = await runFerry(['list', job, '--json']);
    expect(list.code, list.stderr).to.equal(0);
    expect(json<{ restorePoints: unknown[] }>(list).restorePoints).to.have.length(2);
  });

  it('reads its settings from --config files: a pre-shared key on the data pipe, one task slot, an encrypted repository from a YAML file', async function () {
    const dir = path.join(t.dir, 'configured');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'psk.hex'), randomBytes(32).toString('hex') + '\n');
    writeFileSync(path.join(dir, 'pass'), 'a passphrase for the test\n');
    writeFileSync(path.join(dir, 'proxy.yaml'), 'listen: 127.0.0.1:0\npsk: { identity: site-a, keyFile: ./psk.hex }\ntaskSlots: 1\n');
    writeFileSync(path.join(dir, 'repo.yaml'), 'type: filesystem\npath: ./repo\nencryption: { passphraseFile: ./pass }\n');
    writeFileSync(
      path.join(dir, 'service.yaml'),
      `listen: 127.0.0.1:0\ncerts: ${JSON.stringify(certs)}\npsk: { identity: site-a, keyFile: ./psk.hex }\nrepository: ./repo.yaml\n`,
    );
    const proxy = await startService(['proxy', 'serve', '--config', path.join(dir, 'proxy.yaml')]);
    services.push(proxy);
    const repo = await startService(['repository', 'serve', '--config', path.join(dir, 'service.yaml')]);
    services.push(repo);
    const j = writeJob(t.dir, remoteJob({ server: repo.address, proxies: [proxy.address], certs, disks: ['web01.raw', 'web01-data.raw'] }), 'configured.yaml');
    const r = await runFerry(['backup', j, '--json']);
    const report = json<ReportJson>(r);
    expect(report.status, r.stderr + JSON.stringify(report.error ?? report.disks.map((d) => d.status))).to.equal('success');
    expect(report.disks.map((d) => d.proxy)).to.deep.equal([proxy.address, proxy.address], 'two disks queue for the one slot');
    expect(readFileSync(path.join(dir, 'repo', 'ferry-repository.json'), 'utf8')).to.include('AES-256-GCM');
    const to = path.join(dir, 'restored.raw');
    const rr = await runFerry(['restore', j, '--vm', 'web01', '--disk', 'web01-data.raw', '--to', to]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(to, path.join(images, 'web01-data.raw'))).to.equal(-1);
    const v = await runFerry(['verify', '--repository', path.join(dir, 'repo'), '--passphrase-file', path.join(dir, 'pass'), '--json']);
    expect(v.code, v.stdout + v.stderr).to.equal(0, 'the proxy hashed with the repository\'s block-id key');
  });

  it('sends commands that need the repository itself to the repository host (CLI_USAGE)', async function () {
    const r = await runFerry(['verify', job, '--json']);
    expect(r.code).to.equal(2);
    expect(json<{ error: { code: string } }>(r).error.code).to.equal('CLI_USAGE');
  });
});
