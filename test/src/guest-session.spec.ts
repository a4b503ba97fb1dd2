import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage } from '@ferry/core/testing';
import { initCerts } from '@ferry/core/remote/wire';
import { FERRY_BIN, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';

const FIXTURE_PLUGINS = path.join(ROOT, 'test', 'fixtures', 'plugins');

interface Report {
  vms: {
    status: string;
    restorePoint: string | null;
    error?: { code: string; message: string };
    guest?: { consistency: string; steps: { step: string; status: string }[]; freezeWindowMs: number | null; applications: { name: string; step: string; method: string }[]; warnings: string[] };
  }[];
}

/**
 * The session's guest step order and its guarantees (thaw after every freeze, post-thaw after every
 * pre-freeze, the runtime removed, a prepared snapshot abandoned), with a guest runtime and a source
 * host that journal each call (test/fixtures/plugins/guest-sim), in both placements.
 */
for (const placement of ['embedded', 'remote'] as const) {
  describe(`guest steps in the session, ${placement} data movers`, function () {
    this.timeout(120_000);
    const t = tempDir(`ferry-guest-session-${placement}-`);
    const journal = path.join(t.dir, 'journal');
    const certs = path.join(t.dir, 'certs');
    const services: ServiceProcess[] = [];

    before(async function () {
      mkdirSync(path.join(t.dir, 'images'), { recursive: true });
      await makeVmImage(path.join(t.dir, 'images', 'vm.raw'), { sizeBytes: 2 * 1024 * 1024, seed: 9, holes: 0 });
      if (placement === 'remote') {
        await initCerts(certs);
        // the proxy runs the job's filters, the fixture's guest-ranges among them
        services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs], 20_000, { FERRY_PLUGIN_PATH: FIXTURE_PLUGINS }));
        services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]));
      }
    });

    after(async function () {
      await Promise.all(services.map((s) => s.stop()));
      t.cleanup();
    });

    function job(guest: string, extra: string[] = []): string {
      const where =
        placement === 'embedded'
          ? ['repository: { type: filesystem, path: ./repo }']
          : [`repository: { server: ${JSON.stringify(services[1].address)} }`, `proxies: [ { address: ${JSON.stringify(services[0].address)} } ]`, `certs: ${certs}`];
      return writeJob(
        t.dir,
        [
          'job: guest-steps',
          `plugins: [${FIXTURE_PLUGINS}]`,
          `source: { host: snap-sim, datastore: ./images, vms: [ { name: vm1, disks: [vm.raw], guest: { os: sim, via: qga, agent: "unix:/nonexistent", ${guest} } } ] }`,
          ...where,
          ...extra,
          'storage: { blockSize: 256KiB, compression: optimal }',
        ].join('\n'),
      );
    }

    async function backup(guest: string, env: Record<string, string> = {}, extra: string[] = []): Promise<{ report: Report; calls: string[]; disks: { blocks: { filtered?: Record<string, number> } }[] }> {
      writeFileSync(journal, '');
      const r = await runFerry(['backup', job(guest, extra), '--json'], { env: { ...process.env, FERRY_GUEST_SIM_JOURNAL: journal, ...env } });
      const report = json<Report & { disks: { blocks: { filtered?: Record<string, number> } }[] }>(r);
      return { report, calls: readFileSync(journal, 'utf8').trim().split('\n'), disks: report.disks };
    }

    it('runs the steps in order, the source host prepared before the freeze and opened after the thaw', async function () {
      const { report, calls } = await backup('timeoutSeconds: 10');
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'take', 'thaw', 'open', 'postThaw', 'afterBackup', 'close', 'release success']);
      const vm = report.vms[0];
      expect(vm.status).to.equal('success');
      expect(vm.guest!.steps.map((s) => s.step)).to.deep.equal(['deploy', 'preFreeze', 'freeze', 'snapshot', 'thaw', 'postThaw', 'postBackup', 'remove']);
      expect(vm.guest!.consistency).to.equal('application');
      expect(vm.guest!.freezeWindowMs).to.be.a('number');
      expect(vm.guest!.applications.map((a) => `${a.step}:${a.method}`)).to.deep.equal(['preFreeze:SIM LOCK', 'postThaw:SIM UNLOCK']);
    });

    it("the guest's swap ranges reach the disk and the filter that drops swap never reads them", async function () {
      const skip = JSON.stringify([{ offset: 512 * 1024, length: 1024 * 1024 }]);
      const { report, calls, disks } = await backup('timeoutSeconds: 10', { FERRY_GUEST_SIM_SKIP: skip }, ['filters: [zero, guest-ranges]']);
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'take', 'thaw', 'open', 'postThaw', 'skipExtents', 'afterBackup', 'close', 'release success']);
      expect(report.vms[0].guest!.steps.map((s) => s.step)).to.include('skipExtents');
      expect(disks[0].blocks.filtered?.['guest-ranges']).to.equal(4); // 1 MiB of 256 KiB blocks
    });

    it('swap ranges with warnings: the ranges are used and the warnings reach the report', async function () {
      const skip = JSON.stringify([{ offset: 0, length: 512 * 1024 }]);
      const { report, disks } = await backup('timeoutSeconds: 10', { FERRY_GUEST_SIM_SKIP: skip, FERRY_GUEST_SIM_SKIP_WARNING: 'swap /dev/dm-1 on a mapped device: read as data' }, ['filters: [zero, guest-ranges]']);
      expect(disks[0].blocks.filtered?.['guest-ranges']).to.equal(2);
      expect(report.vms[0].guest!.warnings).to.deep.equal(['swap /dev/dm-1 on a mapped device: read as data']);
    });

    it('a failed snapshot is thawed, abandoned and gets no post-backup actions', async function () {
      const { report, calls } = await backup('timeoutSeconds: 10', { FERRY_GUEST_SIM_FAIL: 'take' });
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'take', 'thaw', 'abandon', 'postThaw', 'close']);
      expect(report.vms[0].status).to.equal('failed');
      expect(report.vms[0].error?.message).to.match(/take failed as the test asked/);
    });

    it('a VM that fails before its freeze is thawed all the same, and gets no snapshot', async function () {
      const { report, calls } = await backup('timeoutSeconds: 10', { FERRY_GUEST_SIM_FAIL: 'preFreeze' });
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'thaw', 'postThaw', 'close']);
      expect(report.vms[0].guest!.freezeWindowMs).to.equal(null);
    });

    it('a freeze that hangs is stopped at timeoutSeconds (GUEST_TIMEOUT) and thawed', async function () {
      const t0 = Date.now();
      const { report, calls } = await backup('timeoutSeconds: 1', { FERRY_GUEST_SIM_HANG: 'freeze' });
      expect(Date.now() - t0).to.be.below(20_000);
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'thaw', 'abandon', 'postThaw', 'close']);
      expect(report.vms[0].error?.code).to.equal('GUEST_TIMEOUT');
    });

    it('onGuestFailure continue: a failed freeze is still thawed and the point is crash-consistent', async function () {
      const { report, calls } = await backup('timeoutSeconds: 10, onGuestFailure: continue', { FERRY_GUEST_SIM_FAIL: 'freeze' });
      expect(calls).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'take', 'thaw', 'open', 'postThaw', 'afterBackup', 'close', 'release success']);
      const vm = report.vms[0];
      expect(vm.status).to.equal('success');
      expect(vm.restorePoint).to.be.a('string');
      expect(vm.guest!.consistency).to.equal('crash');
      expect(vm.guest!.warnings.join(' ')).to.match(/freeze failed/);
    });

    it('Ctrl-C while the guest is frozen thaws it, removes the runtime and commits nothing', async function () {
      writeFileSync(journal, '');
      const child = spawn(process.execPath, [FERRY_BIN, 'backup', job('timeoutSeconds: 60'), '--json'], {
        env: { ...process.env, FERRY_GUEST_SIM_JOURNAL: journal, FERRY_GUEST_SIM_HANG: 'freeze' },
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const done = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && !(existsSync(journal) && readFileSync(journal, 'utf8').includes('freeze'))) await new Promise((r) => setTimeout(r, 50));
      child.kill('SIGINT');
      const code = await done;
      expect(code).to.not.equal(0);
      expect(readFileSync(journal, 'utf8').trim().split('\n')).to.deep.equal(['connect', 'preFreeze', 'prepareSnapshot', 'freeze', 'thaw', 'abandon', 'postThaw', 'close']);
      const vm = json<Report>({ code, signal: null, stdout: out, stderr: '' }).vms[0];
      expect(vm.error?.code).to.equal('SESSION_INTERRUPTED');
      expect(vm.restorePoint).to.equal(null);
    });
  });
}
