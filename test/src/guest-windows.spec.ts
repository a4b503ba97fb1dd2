import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage, skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { SSHD } from '@ferry/guest-common/testing';
import { startWindowsSimGuest, type WindowsSimGuest } from '@ferry/guest-windows/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

interface Report {
  status: string;
  vms: {
    vm: string;
    status: string;
    restorePoint: string | null;
    error?: { code: string; message: string };
    guest?: { consistency: string; steps: { step: string; status: string }[]; applications: { name: string; status: string; method: string; step: string }[]; warnings: string[] };
  }[];
}

/** `ferry backup` of a VM whose guest is the Windows simulator behind sshd on loopback. */
describe('Windows guest processing in a backup session (ferry backup, simulated Windows over sshd)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-guest-windows-');
  let guest: WindowsSimGuest;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client' });
    guest = await startWindowsSimGuest(t.dir);
    mkdirSync(path.join(t.dir, 'images'), { recursive: true });
    await makeVmImage(path.join(t.dir, 'images', 'vm.raw'), { sizeBytes: 4 * 1024 * 1024, seed: 9, holes: 0 });
  });

  after(async function () {
    await guest?.stop();
    t.cleanup();
  });

  async function backup(name: string, extra: string[]): Promise<{ code: number; report: Report; out: string }> {
    writeFileSync(path.join(guest.sim, 'events.log'), '');
    // a failed writer stays failed until its service restarts (as on Windows): restart them all
    rmSync(path.join(guest.sim, 'writers.json'), { force: true });
    const lines = [
      '      guest:',
      '        os: windows',
      `        host: ${guest.host}`,
      `        port: ${guest.port}`,
      '        user: root',
      `        key: ${path.relative(t.dir, guest.userKey)}`,
      `        knownHosts: ${path.relative(t.dir, guest.knownHosts)}`,
      '        mounts: ["C:"]',
      '        applications: [sqlserver]',
      '        vssMode: full',
      '        timeoutSeconds: 30',
      ...extra.map((l) => `        ${l}`),
    ];
    const base = basicJob({ disks: ['vm.raw'], repo: `./repo-${name}` });
    const file = writeJob(t.dir, base.replace('      disks: [vm.raw]', `      disks: [vm.raw]\n${lines.join('\n')}`), `${name}.yaml`);
    const r = await runFerry(['backup', file, '--json']);
    return { code: r.code ?? -1, report: json<Report>(r), out: r.stdout + r.stderr };
  }

  it('VSS success: application-consistent point, then SQL Server log truncation', async function () {
    guest.configure({ faults: {} });
    const { code, report, out } = await backup('ok', []);
    expect(code, out).to.equal(0);
    const vm = report.vms[0];
    expect(vm.guest!.consistency).to.equal('application');
    expect(vm.guest!.applications.map((a) => `${a.step}:${a.name}:${a.status}:${a.method}`)).to.include("postBackup:sqlserver:success:log truncation");
    const ev = guest.events();
    expect(ev.findIndex((e) => e.startsWith('BACKUP LOG'))).to.be.greaterThan(ev.findIndex((e) => e.startsWith('release ')));
  });

  it('a failing writer under onGuestFailure fail: no point, the set released, no truncation', async function () {
    guest.configure({ faults: { writerFails: { name: 'SqlServerWriter', error: 'Non-retryable error' } } });
    const { code, report } = await backup('fail', ['onGuestFailure: fail']);
    expect(code).to.not.equal(0);
    const vm = report.vms[0];
    expect(vm.status).to.equal('failed');
    expect(vm.restorePoint).to.equal(null);
    expect(vm.error?.code).to.equal('GUEST_STEP_FAILED');
    expect(vm.error?.message).to.match(/SqlServerWriter/);
    expect(vm.guest!.steps.map((s) => `${s.step}:${s.status}`)).to.include.members(['freeze:failed', 'thaw:success', 'remove:success']);
    const ev = guest.events();
    expect(ev.some((e) => e.startsWith('release '))).to.equal(true);
    expect(ev.some((e) => e.startsWith('BACKUP LOG'))).to.equal(false);
    expect(ev.some((e) => e.startsWith('remove '))).to.equal(true);
  });

  it('a failing writer under onGuestFailure continue: a crash-consistent point with a warning, logs kept', async function () {
    guest.configure({ faults: { writerFails: { name: 'SqlServerWriter', error: 'Timed out' } } });
    const { code, report, out } = await backup('continue', ['onGuestFailure: continue']);
    expect(code, out).to.equal(0);
    const vm = report.vms[0];
    expect(vm.restorePoint).to.be.a('string');
    expect(vm.guest!.consistency).to.equal('crash');
    expect(vm.guest!.warnings.join('\n')).to.match(/SqlServerWriter.*crash-consistent/s);
    expect(guest.events().some((e) => e.startsWith('BACKUP LOG'))).to.equal(false);
    expect(guest.events().some((e) => e.startsWith('release ')), JSON.stringify([guest.events(), vm.guest], null, 1)).to.equal(true);
  });

  it('freeze through the guest agent: writers held by qemu-ga VSS; VSS letting go first makes a crash-consistent point', async function () {
    guest.configure({ faults: {} });
    const qga = await guest.startAgent();
    try {
      const ok = await backup('agent-ok', [`agent: ${qga.agent}`, 'freeze: agent']);
      expect(ok.code, ok.out).to.equal(0);
      expect(ok.report.vms[0].guest!.consistency).to.equal('application');
      expect(guest.events().filter((e) => e.startsWith('agent '))).to.deep.equal(['agent freeze VSS_BT_FULL 1 volume(s)', 'agent thaw BackupComplete (full)']);
    } finally {
      await qga.close();
    }
    // VSS lets go at once: every thaw comes too late
    const slow = await guest.startAgent({ holdLimitMs: 0 });
    try {
      const late = await backup('agent-late', [`agent: ${slow.agent}`, 'freeze: agent']);
      expect(late.code, late.out).to.equal(0);
      const vm = late.report.vms[0];
      expect(vm.restorePoint).to.be.a('string');
      expect(vm.guest!.consistency).to.equal('crash');
      expect(vm.guest!.warnings.join('\n')).to.match(/limited up to 10 seconds/);
      expect(guest.events().some((e) => e.startsWith('BACKUP LOG'))).to.equal(false);
    } finally {
      await slow.close();
    }
  });
});
