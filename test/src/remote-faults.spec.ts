import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { appendFileSync, existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { startTcpRelay, type TcpRelay } from '@ferry/core/remote/wire/testing';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { FIXTURE_PLUGINS } from './support/gated-backup.js';
import { FERRY_BIN, ROOT, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { remoteJob, startService, type ServiceProcess } from './support/remote-services.js';

interface ReportJson {
  status: string;
  reconnects: number;
  disks: { disk: string; status: string; reconnects: number; resentBlocks: number; restorePoint: string | null; error?: { code: string } }[];
  vms: { status: string; restorePoint: string | null; error?: { code: string; message: string } }[];
  error?: { code: string; message: string };
}

/** The repository service's in-flight window (data blocks sent and not yet kept), its default. */
const WINDOW = 32;
const MiB = 1024 * 1024;

/**
 * Faults between the data movers, with real processes on loopback: a TCP relay between the
 * repository service and the proxy that cuts the data pipe mid-disk, and a repository service that
 * is killed in the middle of a session.
 */
describe('remote data movers: dropped data pipe and a lost repository service', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-remote-faults-');
  const images = path.join(t.dir, 'images');
  const certs = path.join(t.dir, 'certs');
  const repoDir = path.join(t.dir, 'repo');
  let proxy: ServiceProcess;
  let repo: ServiceProcess | undefined;
  let relay: TcpRelay | undefined;

  const startRepository = (): Promise<ServiceProcess> => startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', repoDir]);

  before(async function () {
    mkdirSync(images);
    await initCerts(certs);
    // large enough that the cuts (every 4 MiB relayed) land mid-disk
    await makeVmImage(path.join(images, 'big.raw'), { sizeBytes: 48 * MiB, seed: 21, holes: 0.05 });
    proxy = await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]);
    repo = await startRepository();
  });

  after(async function () {
    await relay?.close();
    await Promise.all([proxy?.stop(), repo?.stop()]);
    t.cleanup();
  });

  it('resumes a data pipe cut three times mid-disk: the session completes, reconnects are counted, at most the window is resent, the restore is byte-identical', async function () {
    relay = await startTcpRelay({ target: proxy.address });
    relay.cutAfter(4 * MiB, 3);
    const job = writeJob(t.dir, remoteJob({ server: repo!.address, proxies: [relay.address], certs, disks: ['big.raw'] }), 'relay.yaml');
    const r = await runFerry(['backup', job, '--json']);
    const report = json<ReportJson>(r);
    expect(report.status, r.stderr + JSON.stringify(report.error ?? report.disks[0].error)).to.equal('success');
    expect(relay.cuts).to.equal(3);
    expect(report.disks[0].reconnects).to.equal(3);
    expect(report.reconnects).to.equal(3);
    expect(report.disks[0].resentBlocks).to.be.at.most(WINDOW * 3);
    const to = path.join(t.dir, 'big.restored.raw');
    const rr = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--to', to]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(to, path.join(images, 'big.raw'))).to.equal(-1);
  });

  it('fails cleanly when the repository service is killed mid-session: a coded error, no half point, a rerun succeeds and every earlier point restores', async function () {
    const jobFor = (server: string): string => writeJob(t.dir, remoteJob({ server, proxies: [proxy.address], certs, disks: ['big.raw'] }), 'kill.yaml');
    const before = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', jobFor(repo!.address), '--json'])).restorePoints;
    expect(before).to.have.length(1);
    // 30 MiB of new random data: the session fills and stores a pack (16 MiB) well before its end
    await changeVmImage(path.join(images, 'big.raw'), { count: 120, length: 256 * 1024, seed: 3 });
    // kill -9 the repository service as soon as this session has stored its first pack. Its puts
    // sleep (the test-only slow-filesystem backend over the same folder), so the session cannot
    // finish between that moment and the kill, however fast the pipe is.
    await repo!.stop();
    const slowYaml = path.join(t.dir, 'slow-repo.yaml');
    writeFileSync(slowYaml, `type: slow-filesystem\npath: ${JSON.stringify(repoDir)}\nputDelayMs: 300\n`);
    repo = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', slowYaml], 20_000, { FERRY_PLUGIN_PATH: FIXTURE_PLUGINS });
    const packsBefore = countPacks(repoDir);
    let ended = false;
    const running = runFerry(['backup', jobFor(repo!.address), '--json']).finally(() => (ended = true));
    const deadline = Date.now() + 60_000;
    while (countPacks(repoDir) === packsBefore && !ended && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    await repo!.kill();
    const r = await running;
    const report = json<ReportJson>(r);
    expect(r.code, 'the backup ended before the kill').to.equal(1);
    expect(report.status).to.equal('failed');
    const code = report.error?.code ?? report.vms[0].error?.code;
    expect(code, JSON.stringify(report)).to.equal('REMOTE_SESSION_LOST');
    expect(report.vms[0].restorePoint).to.equal(null);

    repo = await startRepository();
    const job = jobFor(repo.address);
    const afterKill = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json'])).restorePoints;
    expect(afterKill.map((p) => p.id)).to.deep.equal(before.map((p) => p.id), 'no half restore point');
    const rerun = json<ReportJson>(await runFerry(['backup', job, '--json']));
    expect(rerun.status, JSON.stringify(rerun.error ?? rerun.vms[0].error)).to.equal('success');
    const to = path.join(t.dir, 'rerun.restored.raw');
    expect((await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--to', to])).code).to.equal(0);
    expect(await firstDifference(to, path.join(images, 'big.raw'))).to.equal(-1);
    const earlier = path.join(t.dir, 'earlier.restored.raw');
    const er = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'big.raw', '--point', before[0].id, '--to', earlier]);
    expect(er.code, er.stderr).to.equal(0);
    expect(await firstDifference(earlier, path.join(t.dir, 'big.restored.raw'))).to.equal(-1, 'the earlier point still restores the data it was taken from');
  });

  it('stops cleanly on Ctrl-C of the backup server: exit 130, nothing committed, the services keep serving', async function () {
    // 128 MiB of random data: the first pack (16 MiB) is stored early, so the signal lands mid-disk
    const random = path.join(images, 'random.raw');
    for (let i = 0; i < 32; i++) appendFileSync(random, randomBytes(4 * MiB));
    const job = writeJob(t.dir, remoteJob({ server: repo!.address, proxies: [proxy.address], certs, disks: ['random.raw'] }), 'interrupt.yaml');
    const before = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json'])).restorePoints;
    const packsBefore = countPacks(repoDir);
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const deadline = Date.now() + 60_000;
    while (countPacks(repoDir) === packsBefore && child.exitCode === null && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
    child.kill('SIGINT');
    expect(await exited).to.equal(130);
    const report = JSON.parse(stdout) as ReportJson;
    expect(report.status).to.equal('failed');
    expect(report.vms[0].restorePoint).to.equal(null);
    const after = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json'])).restorePoints;
    expect(after.map((p) => p.id)).to.deep.equal(before.map((p) => p.id));
    const rerun = json<ReportJson>(await runFerry(['backup', job, '--json']));
    expect(rerun.status, JSON.stringify(rerun.error ?? rerun.vms[0].error)).to.equal('success');
  });
});

function countPacks(repoDir: string): number {
  const dir = path.join(repoDir, 'packs');
  if (!existsSync(dir)) return 0;
  let n = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(path.join(d, e.name));
      else n++;
    }
  };
  walk(dir);
  return n;
}
