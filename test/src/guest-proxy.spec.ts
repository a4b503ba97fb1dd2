import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage, skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { initCerts } from '@ferry/core/remote/wire';
import { makeLoopMount, SSHD, startSshdGuest } from '@ferry/guest-common/testing';
import { startWindowsSimGuest, type WindowsSimGuest } from '@ferry/guest-windows/testing';
import { basicJob, FERRY_BIN, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';

interface Report {
  vms: { status: string; restorePoint: string | null; guest?: { runtime?: string; consistency: string; steps: { step: string; status: string }[] } }[];
}

/**
 * `ferry guest-proxy serve` on loopback between `ferry backup` and the guest (the Windows simulator
 * behind a real sshd, and a Linux sshd guest): the steps run on the proxy in order, and a backup
 * server killed while the guest is frozen leaves the proxy to thaw and remove the runtime.
 */
describe('guest interaction proxy (ferry guest-proxy serve on loopback)', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-guest-proxy-');
  let guest: WindowsSimGuest;
  let proxy: ServiceProcess;
  const certs = path.join(t.dir, 'certs');

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client', openssl: 'openssl' });
    await initCerts(certs);
    guest = await startWindowsSimGuest(t.dir);
    proxy = await startService(['guest-proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]);
    mkdirSync(path.join(t.dir, 'images'), { recursive: true });
    await makeVmImage(path.join(t.dir, 'images', 'vm.raw'), { sizeBytes: 2 * 1024 * 1024, seed: 3, holes: 0 });
    for (const s of ['pre', 'post', 'post-backup']) writeFileSync(path.join(t.dir, `${s}.ps1`), `Write-Output '${s}'\n# sim-sh: echo ${s}\n`);
  });

  after(async function () {
    await proxy?.stop();
    await guest?.stop();
    t.cleanup();
  });

  function job(name: string, extra: string[] = [], address = proxy.address): string {
    writeFileSync(path.join(guest.sim, 'events.log'), '');
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
      '        scripts: { preFreeze: ./pre.ps1, postThaw: ./post.ps1, postBackup: ./post-backup.ps1 }',
      '        timeoutSeconds: 60',
      ...extra.map((l) => `        ${l}`),
    ];
    const base = basicJob({ disks: ['vm.raw'], repo: `./repo-${name}`, extra: `guestProxies: [ { address: "${address}" } ]\ncerts: ./certs` });
    return writeJob(t.dir, base.replace('      disks: [vm.raw]', `      disks: [vm.raw]\n${lines.join('\n')}`), `${name}.yaml`);
  }

  const plain = (): string[] => guest.events().map((e) => e.replace(/\{[0-9a-f-]+\}/g, '{set}').replace(/ferry-[0-9a-f]+/, 'ferry-X'));

  it('runs the guest steps on the proxy, in order', async function () {
    guest.configure({ faults: {} });
    const r = await runFerry(['backup', job('ok'), '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const vm = json<Report>(r).vms[0];
    expect(vm.restorePoint).to.be.a('string');
    expect(vm.guest!.runtime).to.match(new RegExp(`via guest proxy ${proxy.address.replace(/\./g, '\\.')}$`));
    expect(vm.guest!.consistency).to.equal('application');
    expect(plain()).to.deep.equal([
      'deploy ferry-X',
      'run preFreeze-pre.ps1',
      'create {set} full C:',
      'release {set} end backup (BackupComplete)',
      'run postThaw-post.ps1',
      "BACKUP LOG [sales] TO DISK = N'NUL'",
      'run postBackup-post-backup.ps1',
      'remove ferry-X',
    ]);
    // credentials never reach the proxy's log
    expect(proxy.stderr()).to.not.include('BEGIN OPENSSH PRIVATE KEY');
  });

  it('a backup server killed while the guest is frozen: the proxy thaws and removes the runtime', async function () {
    guest.configure({ faults: { freezeDelayMs: 20_000 } });
    const file = job('killed');
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', file, '--json'], { cwd: ROOT, stdio: 'ignore' });
    const gone = new Promise((r) => child.once('exit', r));
    const until = async (what: RegExp, ms: number): Promise<boolean> => {
      const deadline = Date.now() + ms;
      while (Date.now() < deadline) {
        if (guest.events().some((e) => what.test(e))) return true;
        await new Promise((r) => setTimeout(r, 50));
      }
      return false;
    };
    try {
      expect(await until(/^create /, 30_000), guest.events().join('\n')).to.equal(true);
      child.kill('SIGKILL');
      await gone;
      // well before the watchdog (60 s) and the sim's answer to freeze (20 s)
      expect(await until(/^remove /, 15_000), `${guest.events().join('\n')}\n${proxy.stderr()}`).to.equal(true);
    } finally {
      child.kill('SIGKILL');
    }
    const ev = plain();
    const release = ev.find((e) => e.startsWith('release '));
    // released by the proxy's thaw, not by the guest's watchdog
    expect(release).to.equal('release {set} end backup (BackupComplete)');
    expect(release).to.not.match(/watchdog/);
    expect(ev.indexOf(release!)).to.be.lessThan(ev.indexOf('remove ferry-X'));
    expect(ev.some((e) => e.startsWith('BACKUP LOG'))).to.equal(false);
    expect(proxy.stderr()).to.match(/left without closing the guest session.*thawing/);
  });

  it('no guest proxy answering: the deploy step fails naming it (onGuestFailure continue: a crash-consistent point)', async function () {
    guest.configure({ faults: {} });
    const r = await runFerry(['backup', job('unreachable', ['onGuestFailure: continue'], '127.0.0.1:1'), '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const vm = json<Report>(r).vms[0];
    expect(vm.restorePoint).to.be.a('string');
    expect(vm.guest!.consistency).to.equal('crash');
    expect(vm.guest!.steps[0]).to.include({ step: 'deploy', status: 'failed' });
    expect(JSON.stringify(vm.guest)).to.match(/PIPE_UNREACHABLE.*127\.0\.0\.1:1/);
    expect(guest.events()).to.deep.equal([]);
  });

  it('a Linux guest (sshd on loopback) through the proxy: scripts in order, a loop mount frozen and thawed', async function () {
    skipUnlessTools(this, { fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs' });
    const linux = await startSshdGuest(path.join(t.dir, 'linux-sshd'));
    const fs = makeLoopMount(t.dir);
    const log = path.join(t.dir, 'linux-order.log');
    try {
      for (const s of ['pre', 'post', 'post-backup']) writeFileSync(path.join(t.dir, `${s}.sh`), `#!/bin/sh\necho ${s} >> ${log}\n`, { mode: 0o755 });
      writeFileSync(log, '');
      const lines = [
        '      guest:',
        '        os: linux',
        `        host: ${linux.host}`,
        `        port: ${linux.port}`,
        `        key: ${path.relative(t.dir, linux.userKey)}`,
        `        knownHosts: ${path.relative(t.dir, linux.knownHosts)}`,
        '        freeze: fsfreeze',
        `        mounts: [${fs.mountPoint}]`,
        '        scripts: { preFreeze: ./pre.sh, postThaw: ./post.sh, postBackup: ./post-backup.sh }',
        '        timeoutSeconds: 30',
      ];
      const base = basicJob({ disks: ['vm.raw'], repo: './repo-linux', extra: `guestProxies: [ { address: "${proxy.address}" } ]\ncerts: ./certs` });
      const file = writeJob(t.dir, base.replace('      disks: [vm.raw]', `      disks: [vm.raw]\n${lines.join('\n')}`), 'linux.yaml');
      const r = await runFerry(['backup', file, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const vm = json<Report>(r).vms[0];
      expect(vm.guest!.runtime).to.match(/via guest proxy/);
      expect(vm.guest!.steps.filter((x) => x.step !== 'skipExtents').map((x) => `${x.step}:${x.status}`)).to.deep.equal([
        'deploy:success', 'preFreeze:success', 'freeze:success', 'snapshot:skipped', 'thaw:success', 'postThaw:success', 'postBackup:success', 'remove:success',
      ]);
      expect(readFileSync(log, 'utf8').trim().split('\n')).to.deep.equal(['pre', 'post', 'post-backup']);
      expect(await fs.writable(3000)).to.equal(true);
    } finally {
      fs.remove();
      await linux.stop();
    }
  });
});
