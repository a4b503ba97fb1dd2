import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage, skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { makeLoopMount, SSHD, startSshdGuest, type LoopMount, type SshdGuest } from '@ferry/guest-common/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

interface GuestOut {
  consistency: string;
  runtime?: string;
  steps: { step: string; status: string; durationMs: number; detail?: string; error?: { code: string; message: string }; scripts?: { script: string; exitCode: number; output: string }[] }[];
  freezeWindowMs: number | null;
  warnings: string[];
}
interface Report {
  status: string;
  vms: { vm: string; status: string; restorePoint: string | null; error?: { code: string; message: string }; guest?: GuestOut }[];
}

/**
 * `ferry backup` of a VM whose guest is a real sshd on loopback (this machine as root): the steps
 * in the report, their order, scripts, onGuestFailure, and the freeze of a loop mount the suite
 * makes (never one of this machine's own file systems).
 */
describe('guest processing over SSH in a backup session (ferry backup, sshd on loopback)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-guest-ssh-');
  let sshd: SshdGuest;
  let fs: LoopMount;
  const log = path.join(t.dir, 'order.log');

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root; loop mounts)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client', fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs' });
    sshd = await startSshdGuest(path.join(t.dir, 'sshd'));
    fs = makeLoopMount(t.dir);
    mkdirSync(path.join(t.dir, 'images'), { recursive: true });
    await makeVmImage(path.join(t.dir, 'images', 'vm.raw'), { sizeBytes: 4 * 1024 * 1024, seed: 5, holes: 0 });
    for (const [name, body] of Object.entries({
      'pre.sh': `echo pre >> ${log}`,
      'post.sh': `echo post >> ${log}`,
      'post-backup.sh': `echo post-backup >> ${log}`,
      'fail.sh': `echo pre-failed >> ${log}; echo "cannot quiesce" >&2; exit 7`,
      'hang.sh': 'sleep 60',
    })) {
      writeFileSync(path.join(t.dir, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    }
  });

  after(async function () {
    fs?.remove();
    await sshd?.stop();
    t.cleanup();
  });

  function job(name: string, guest: string[]): string {
    const lines = [
      '      guest:',
      '        os: linux',
      '        via: ssh',
      `        host: ${sshd.host}`,
      `        port: ${sshd.port}`,
      '        user: root',
      `        key: ${path.relative(t.dir, sshd.userKey)}`,
      `        knownHosts: ${path.relative(t.dir, sshd.knownHosts)}`,
      '        freeze: fsfreeze',
      `        mounts: [${fs.mountPoint}]`,
      ...guest.map((l) => `        ${l}`),
    ];
    const base = basicJob({ disks: ['vm.raw'], repo: `./repo-${name}` });
    // the guest block belongs to the VM entry, right after its disks
    return writeJob(t.dir, base.replace('      disks: [vm.raw]', `      disks: [vm.raw]\n${lines.join('\n')}`), `${name}.yaml`);
  }

  async function backup(name: string, guest: string[]): Promise<{ code: number; report: Report; stdout: string }> {
    writeFileSync(log, '');
    const r = await runFerry(['backup', job(name, guest), '--json']);
    return { code: r.code ?? -1, report: json<Report>(r), stdout: r.stdout + r.stderr };
  }

  const steps = (g: GuestOut): string[] => g.steps.map((s) => `${s.step}:${s.status}`);
  const markers = (): string[] => readFileSync(log, 'utf8').trim().split('\n').filter(Boolean);

  it('runs deploy, preFreeze, freeze, thaw, postThaw, postBackup and remove in order and reports each', async function () {
    const { code, report, stdout } = await backup('ok', ['scripts: { preFreeze: ./pre.sh, postThaw: ./post.sh, postBackup: ./post-backup.sh }', 'timeoutSeconds: 30']);
    expect(code, stdout).to.equal(0);
    const vm = report.vms[0];
    expect(vm.restorePoint).to.be.a('string');
    const g = vm.guest!;
    expect(steps(g)).to.deep.equal([
      'deploy:success',
      'preFreeze:success',
      'freeze:success',
      'snapshot:skipped',
      'thaw:success',
      'postThaw:success',
      'skipExtents:success',
      'postBackup:success',
      'remove:success',
    ]);
    expect(g.consistency).to.equal('application');
    expect(g.runtime).to.equal(`ssh root@127.0.0.1:${sshd.port}`);
    expect(g.freezeWindowMs).to.be.a('number').and.to.be.below(30_000);
    const freezeToThaw = g.steps.filter((st) => ['freeze', 'snapshot', 'thaw'].includes(st.step)).reduce((n, st) => n + st.durationMs, 0);
    expect(g.freezeWindowMs!).to.be.at.least(freezeToThaw);
    expect(g.steps.find((s) => s.step === 'freeze')!.detail).to.match(/fsfreeze of 1 file system/);
    expect(markers()).to.deep.equal(['pre', 'post', 'post-backup']);
    expect(await fs.writable(3000)).to.equal(true);
    // the credentials stay where the job names them: not in the report, not in the repository
    const secret = readFileSync(sshd.userKey, 'utf8').split('\n')[1];
    expect(stdout).to.not.include(secret);
    const files = (dir: string): string[] => readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name)) : [path.join(dir, e.name)]));
    for (const f of files(path.join(t.dir, 'repo-ok'))) expect(readFileSync(f).includes(secret), f).to.equal(false);
  });

  it('onGuestFailure fail: a failing preFreeze script fails the VM, post-thaw still runs, post-backup does not', async function () {
    const { code, report } = await backup('fail', ['scripts: { preFreeze: ./fail.sh, postThaw: ./post.sh, postBackup: ./post-backup.sh }']);
    expect(code).to.not.equal(0);
    const vm = report.vms[0];
    expect(vm.status).to.equal('failed');
    expect(vm.restorePoint).to.equal(null);
    expect(vm.error?.code).to.equal('GUEST_STEP_FAILED');
    expect(vm.error?.message).to.match(/exited with 7/).and.to.match(/cannot quiesce/);
    expect(steps(vm.guest!)).to.deep.equal(['deploy:success', 'preFreeze:failed', 'thaw:success', 'postThaw:success', 'postBackup:skipped', 'remove:success']);
    expect(markers()).to.deep.equal(['pre-failed', 'post']);
  });

  it('onGuestFailure continue: a crash-consistent point with a warning, nothing frozen', async function () {
    const { code, report } = await backup('continue', ['scripts: { preFreeze: ./fail.sh, postBackup: ./post-backup.sh }', 'onGuestFailure: continue']);
    expect(code).to.equal(0);
    const vm = report.vms[0];
    expect(vm.status).to.equal('success');
    expect(vm.restorePoint).to.be.a('string');
    expect(vm.guest!.consistency).to.equal('crash');
    expect(vm.guest!.freezeWindowMs).to.equal(null);
    expect(vm.guest!.warnings.join(' ')).to.match(/preFreeze failed.*crash-consistent/);
    expect(steps(vm.guest!)).to.deep.equal(['deploy:success', 'preFreeze:failed', 'snapshot:skipped', 'postThaw:success', 'skipExtents:success', 'postBackup:success', 'remove:success']);
  });

  it('a hanging script is cut at timeoutSeconds (GUEST_TIMEOUT) and the guest is left as it was', async function () {
    const t0 = Date.now();
    const { report } = await backup('hang', ['scripts: { preFreeze: ./hang.sh, postThaw: ./post.sh }', 'timeoutSeconds: 3']);
    expect(Date.now() - t0).to.be.below(30_000);
    const vm = report.vms[0];
    expect(vm.error?.code).to.equal('GUEST_TIMEOUT');
    expect(steps(vm.guest!)).to.deep.equal(['deploy:success', 'preFreeze:failed', 'thaw:success', 'postThaw:success', 'postBackup:skipped', 'remove:success']);
    expect(markers()).to.deep.equal(['post']);
  });

  it('a failed freeze is thawed: the session thaws and the loop mount takes writes again', async function () {
    const name = 'freeze-fails';
    const text = readFileSync(job(name, []), 'utf8').replace(`mounts: [${fs.mountPoint}]`, `mounts: [${fs.mountPoint}, ${path.join(t.dir, 'no-such-mount')}]`);
    writeFileSync(path.join(t.dir, `${name}.yaml`), text);
    const r = await runFerry(['backup', path.join(t.dir, `${name}.yaml`), '--json']);
    const vm = json<Report>(r).vms[0];
    expect(vm.error?.code).to.equal('GUEST_STEP_FAILED');
    expect(steps(vm.guest!)).to.deep.equal(['deploy:success', 'preFreeze:success', 'freeze:failed', 'thaw:success', 'postThaw:success', 'postBackup:skipped', 'remove:success']);
    expect(vm.guest!.freezeWindowMs).to.be.a('number');
    expect(await fs.writable(3000)).to.equal(true);
  });

  it('refuses a guest whose host key differs from knownHosts (GUEST_HOST_KEY), naming the VM', async function () {
    const text = readFileSync(job('wrong-key', []), 'utf8').replace(path.relative(t.dir, sshd.knownHosts), path.relative(t.dir, sshd.wrongKnownHosts));
    writeFileSync(path.join(t.dir, 'wrong-key.yaml'), text);
    const r = await runFerry(['backup', path.join(t.dir, 'wrong-key.yaml'), '--json']);
    const vm = json<Report>(r).vms[0];
    expect(vm.error?.code).to.equal('GUEST_HOST_KEY');
    expect(vm.error?.message).to.match(/vm web01/);
    expect(steps(vm.guest!)).to.deep.equal(['deploy:failed']);
  });

  it('reads a password only from the environment variable passwordEnv names, and says when it is unset', async function () {
    const text = readFileSync(job('password', []), 'utf8').replace(/^ *key:.*\n/m, '        passwordEnv: FERRY_TEST_GUEST_PASSWORD_UNSET\n');
    writeFileSync(path.join(t.dir, 'password.yaml'), text);
    const env = { ...process.env };
    delete env.FERRY_TEST_GUEST_PASSWORD_UNSET;
    const r = await runFerry(['backup', path.join(t.dir, 'password.yaml'), '--json'], { env });
    const vm = json<Report>(r).vms[0];
    expect(vm.error?.code).to.equal('JOB_INVALID');
    expect(vm.error?.message).to.match(/FERRY_TEST_GUEST_PASSWORD_UNSET/).and.to.match(/guest\.passwordEnv/);
    // set, it is tried (this sshd takes keys only) and never shown
    const r2 = await runFerry(['backup', path.join(t.dir, 'password.yaml'), '--json'], { env: { ...env, FERRY_TEST_GUEST_PASSWORD_UNSET: 'pw-7f3a9c' } });
    expect(json<Report>(r2).vms[0].error?.code).to.equal('GUEST_UNREACHABLE');
    expect(r2.stdout + r2.stderr).to.not.include('pw-7f3a9c');
  });

  it('names the key path of a guest key the job leaves out (JOB_INVALID)', async function () {
    const text = readFileSync(job('no-known-hosts', []), 'utf8').replace(/^ *knownHosts:.*\n/m, '');
    writeFileSync(path.join(t.dir, 'no-known-hosts.yaml'), text);
    const r = await runFerry(['backup', path.join(t.dir, 'no-known-hosts.yaml'), '--json']);
    expect(r.code).to.equal(2);
    expect(r.stdout + r.stderr).to.match(/JOB_INVALID/).and.to.match(/source\.vms\[0\]\.guest\.knownHosts/);
  });
});
