import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import type { GuestAgentChannel, GuestOptions } from '@ferry/core/plugin';
import { QgaClient } from '@ferry/guest-common';
import { SSHD } from '@ferry/guest-common/testing';
import { defaultSimConfig, startWindowsSimGuest, type WindowsSimGuest } from './testing/windows-sim-guest.js';
import { WindowsGuestRuntime } from './windows-guest-runtime.js';

/**
 * The Windows runtime against a real sshd on loopback whose sessions the Windows simulator answers
 * (testing/windows-sim.ts): the protocol, not real Windows (README, "What was verified").
 */
describe('guest-windows (the Windows simulator behind sshd on loopback, and a fake qemu-ga)', function () {
  this.timeout(60_000);
  let dir: string;
  let guest: WindowsSimGuest;

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client' });
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-guest-windows-'));
    guest = await startWindowsSimGuest(dir);
  });

  beforeEach(() => {
    guest?.configure({ faults: {} });
    if (guest) writeFileSync(path.join(guest.sim, 'events.log'), '');
    if (guest) rmSync(path.join(guest.sim, 'writers.json'), { force: true });
  });

  after(async function () {
    await guest?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  function options(over: Partial<GuestOptions> = {}): GuestOptions {
    return {
      os: 'windows',
      via: 'ssh',
      host: guest.host,
      port: guest.port,
      user: guest.user,
      credentials: { privateKey: readFileSync(guest.userKey), knownHosts: readFileSync(guest.knownHosts, 'utf8') },
      freeze: 'auto',
      mounts: ['C:'],
      scripts: {},
      applications: [{ name: 'sqlserver', options: {} }],
      vssMode: 'full',
      timeoutSeconds: 20,
      ...over,
    };
  }

  function script(name: string, sh: string): string {
    const p = path.join(dir, name);
    writeFileSync(p, `Write-Output 'ferry test'\n# sim-sh: ${sh}\n`);
    return p;
  }

  const sessionFolders = (): string[] => {
    const temp = path.join(guest.sim, 'C', 'Users', 'ferry', 'AppData', 'Local', 'Temp');
    return existsSync(temp) ? readdirSync(temp) : [];
  };

  it('deploys, takes a VSS full snapshot set, releases it with BackupComplete, truncates SQL logs after the point and removes the runtime', async function () {
    const pre = script('pre.ps1', 'echo quiescing');
    const s = await new WindowsGuestRuntime().connect('vm1', options({ scripts: { preFreeze: pre, postBackup: script('post-backup.ps1', 'echo done') } }));
    assert.match(s.label, /^ssh root@127\.0\.0\.1:\d+$/);
    const pf = await s.preFreeze!();
    assert.equal(pf.scripts![0].exitCode, 0);
    assert.match(pf.scripts![0].output, /quiescing/);
    assert.deepEqual(pf.applications!.map((a) => `${a.name}:${a.status}:${a.method}`), ['sqlserver:success:VSS writer SqlServerWriter']);
    const f = await s.freeze();
    assert.equal(f.frozen, 1);
    assert.match(f.detail!, /VSS full snapshot set \{[0-9a-f-]+\} of C:\\/);
    const t = await s.thaw();
    assert.match(t.detail!, /end backup/);
    await s.postThaw!();
    const ab = await s.afterBackup!();
    assert.deepEqual(ab.applications!.map((a) => `${a.name}:${a.status}`), ['sqlserver:success']);
    assert.match(ab.applications![0].detail!, /sales/);
    assert.doesNotMatch(ab.applications![0].detail!, /scratch/);
    await s.close();
    const ev = guest.events().map((e) => e.replace(/\{[0-9a-f-]+\}/g, '{set}').replace(/ferry-[0-9a-f]+/, 'ferry-X'));
    assert.deepEqual(ev, [
      'deploy ferry-X',
      'run preFreeze-pre.ps1',
      'create {set} full C:',
      'release {set} end backup (BackupComplete)',
      "BACKUP LOG [sales] TO DISK = N'NUL'",
      'run postBackup-post-backup.ps1',
      'remove ferry-X',
    ]);
    assert.deepEqual(sessionFolders(), []);
  });

  it('copy mode ends the set without BackupComplete', async function () {
    const s = await new WindowsGuestRuntime().connect('vm1', options({ vssMode: 'copy', applications: [] }));
    await s.freeze();
    await s.thaw();
    await s.close();
    assert.ok(guest.events().some((e) => /^release \{.*\} ended without BackupComplete \(copy\)$/.test(e)), guest.events().join('\n'));
  });

  it('a failing VSS writer fails freeze naming it; thaw still releases the set; no log truncation', async function () {
    // first of many: a listing longer than a script's 4 KiB output tail must still be read whole
    const many = [{ name: 'SqlServerWriter', id: '{a65faa63-5ea8-4ebc-9dbd-a0c4db26912a}' }, ...Array.from({ length: 40 }, (_v, i) => ({ name: `Writer ${i}`, id: `{00000000-0000-0000-0000-${String(i).padStart(12, '0')}}` }))];
    guest.configure({ writers: many, faults: { writerFails: { name: 'SqlServerWriter', error: 'Timed out' } } });
    const s = await new WindowsGuestRuntime().connect('vm1', options());
    await s.preFreeze!();
    await assert.rejects(s.freeze(), (err: Error & { code?: string }) => err.code === 'GUEST_STEP_FAILED' && /SqlServerWriter: \[9\] Failed, Timed out/.test(err.message));
    await s.thaw();
    const ab = await s.afterBackup!();
    assert.equal(ab.applications![0].status, 'skipped');
    await s.close();
    const ev = guest.events();
    assert.ok(ev.some((e) => e.startsWith('release ')), ev.join('\n'));
    assert.ok(!ev.some((e) => e.startsWith('BACKUP LOG')), ev.join('\n'));
    guest.configure({ writers: defaultSimConfig().writers });
  });

  it('the watchdog releases the set when no thaw comes; thaw then warns', async function () {
    const s = await new WindowsGuestRuntime().connect('vm1', options({ timeoutSeconds: 2, applications: [] }));
    await s.freeze();
    const deadline = Date.now() + 8000;
    while (!guest.events().some((e) => /released by the watchdog/.test(e)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(guest.events().some((e) => /released by the watchdog/.test(e)), guest.events().join('\n'));
    const t = await s.thaw();
    assert.match(t.warnings!.join(' '), /watchdog had released/);
    await s.close();
  });

  it('reports pagefile.sys, hiberfil.sys and swapfile.sys extents at their disk offsets, per disk by serial or size', async function () {
    const s = await new WindowsGuestRuntime().connect('vm1', options({ applications: [] }));
    const c = defaultSimConfig();
    assert.equal(c.partitions[0].Offset, 1048576);
    // disk0: C: at 1 MiB, 4 KiB clusters: pagefile LCN 0x2000 (0x100 clusters) and 0x5000 (0x80), hiberfil 0x2100 (0x40)
    assert.deepEqual(await s.skipExtents!({ name: 'disk0' }), [
      { offset: 1048576 + 0x2000 * 4096, length: (0x100 + 0x40) * 4096 },
      { offset: 1048576 + 0x5000 * 4096, length: 0x80 * 4096 },
    ]);
    // disk1: D: at 16 MiB, 64 KiB clusters; the sparse run (LCN -1) is left out
    const d1 = [{ offset: 16 * 1048576 + 0x30 * 65536, length: 0x10 * 65536 }];
    assert.deepEqual(await s.skipExtents!({ name: 'disk1' }), d1);
    // no serial match: the only guest disk of that size
    assert.deepEqual(await s.skipExtents!({ name: 'vdb', size: c.disks[1].Size }), d1);
    assert.deepEqual(await s.skipExtents!({ name: 'vdz' }), []);
    assert.deepEqual(await s.skipExtents!({ name: 'vdz', size: 12345 }), []);
    await s.close();
    // a file fsutil cannot open contributes nothing; the others still count (hiberfil.sys is last on C:)
    guest.configure({ faults: { queryFails: ['hiberfil.sys'] } });
    const s2 = await new WindowsGuestRuntime().connect('vm1', options({ applications: [] }));
    assert.deepEqual(await s2.skipExtents!({ name: 'disk0' }), [
      { offset: 1048576 + 0x2000 * 4096, length: 0x100 * 4096 },
      { offset: 1048576 + 0x5000 * 4096, length: 0x80 * 4096 },
    ]);
    await s2.close();
  });

  it('a hanging script is stopped at its limit (GUEST_TIMEOUT) and the runtime still removed', async function () {
    const s = await new WindowsGuestRuntime().connect('vm1', options({ timeoutSeconds: 3, applications: [], scripts: { preFreeze: script('hang.ps1', 'sleep 30') } }));
    await assert.rejects(s.preFreeze!(), (err: Error & { code?: string }) => err.code === 'GUEST_TIMEOUT');
    await s.close();
    assert.ok(guest.events().some((e) => e.startsWith('remove ')));
  });

  describe('freeze through the guest agent (qemu-ga VSS provider)', function () {
    it('sets the backup type, holds the writers across the snapshot, thaws with BackupComplete', async function () {
      const qga = await guest.startAgent();
      for (const [mode, type] of [['copy', 'VSS_BT_COPY'], ['full', 'VSS_BT_FULL']] as const) {
        writeFileSync(path.join(guest.sim, 'events.log'), '');
        const s = await new WindowsGuestRuntime().connect('vm1', options({ vssMode: mode, agent: qga.agent, freeze: 'agent' }));
        await s.preFreeze!();
        const f = await s.freeze();
        assert.equal(f.frozen, 1);
        assert.match(f.detail!, new RegExp(`qemu-ga VSS ${mode} freeze of 1 volume`));
        const t = await s.thaw();
        assert.match(t.detail!, /guest-fsfreeze-thaw: 1 volume/);
        const ab = await s.afterBackup!();
        assert.equal(ab.applications![0].status, 'success');
        await s.close();
        const ev = guest.events().map((e) => e.replace(/ferry-[0-9a-f]+/, 'ferry-X'));
        assert.deepEqual(ev.slice(0, 4), ['deploy ferry-X', `registry VssOption=${mode === 'copy' ? 5 : 1}`, `agent freeze ${type} 1 volume(s)`, ev[3]]);
        assert.match(ev[3], /^agent thaw BackupComplete/);
        assert.ok(ev.indexOf(ev.find((e) => e.startsWith('BACKUP LOG'))!) > 3, ev.join('\n'));
      }
      await qga.close();
    });

    it('VSS letting go of the writes before the thaw: the point is reported crash-consistent, logs kept', async function () {
      const qga = await guest.startAgent({ holdLimitMs: 200 });
      const s = await new WindowsGuestRuntime().connect('vm1', options({ agent: qga.agent, freeze: 'auto' }));
      await s.freeze();
      await new Promise((r) => setTimeout(r, 500));
      const t = await s.thaw();
      assert.equal(t.crashConsistent, true);
      assert.match(t.warnings!.join(' '), /limited up to 10 seconds.*crash-consistent/);
      const ab = await s.afterBackup!();
      assert.equal(ab.applications![0].status, 'skipped');
      await s.close();
      assert.ok(!guest.events().some((e) => e.startsWith('BACKUP LOG')));
      await qga.close();
    });

    it('a failing writer fails the agent freeze naming it; no provider installed is refused', async function () {
      const qga = await guest.startAgent();
      guest.configure({ faults: { writerFails: { name: 'SqlServerWriter', error: 'Retryable error' } } });
      const s = await new WindowsGuestRuntime().connect('vm1', options({ agent: qga.agent, freeze: 'agent' }));
      await assert.rejects(s.freeze(), (err: Error & { code?: string }) => err.code === 'GUEST_STEP_FAILED' && /Frozen event.*SqlServerWriter: \[9\] Failed, Retryable error/.test(err.message));
      await s.thaw();
      await s.close();
      guest.configure({ faults: {}, agentProvider: false });
      rmSync(path.join(guest.sim, 'writers.json'), { force: true });
      const s2 = await new WindowsGuestRuntime().connect('vm1', options({ agent: qga.agent, freeze: 'agent' }));
      await assert.rejects(s2.freeze(), (err: Error & { code?: string }) => err.code === 'GUEST_STEP_FAILED' && /VSS backup type.*Cannot find path/.test(err.message));
      await s2.close();
      guest.configure({ agentProvider: true });
      await qga.close();
    });
  });

  it('via: qga only: PowerShell through guest-exec, the freeze through the agent, the runtime removed', async function () {
    const qga = await guest.startAgent();
    const s = await new WindowsGuestRuntime().connect('vm1', {
      ...options({ scripts: { preFreeze: script('pre-qga.ps1', 'echo through the agent') } }),
      via: 'qga',
      agent: qga.agent,
      host: undefined,
      credentials: {},
    });
    assert.match(s.label, /^qga unix:/);
    const pf = await s.preFreeze!();
    assert.match(pf.scripts![0].output, /through the agent/);
    assert.equal((await s.freeze()).frozen, 1);
    await s.thaw();
    await s.afterBackup!();
    await s.close();
    const ev = guest.events().map((e) => e.replace(/ferry-[0-9a-f]+/, 'ferry-X'));
    assert.deepEqual(ev, [
      'deploy ferry-X',
      'run preFreeze-pre-qga.ps1',
      'registry VssOption=1',
      'agent freeze VSS_BT_FULL 1 volume(s)',
      'agent thaw BackupComplete (full)',
      "BACKUP LOG [sales] TO DISK = N'NUL'",
      'remove ferry-X',
    ]);
    assert.deepEqual(sessionFolders(), []);
    await qga.close();
  });

  it("via: qga through a source host's agent channel (libvirt's qemu-agent-command) instead of a socket", async function () {
    const qga = await guest.startAgent();
    // what a source host hands over: here a socket client behind the channel, as libvirtd keeps one
    const client = await QgaClient.connect(qga.agent.replace(/^unix:/, ''), 5000);
    const commands: string[] = [];
    const channel: GuestAgentChannel = {
      label: 'qga libvirt:test domain vm1',
      execute: (command, args, timeoutMs) => (commands.push(command), client.execute(command, args, timeoutMs)),
    };
    try {
      const s = await new WindowsGuestRuntime().connect('vm1', { ...options(), via: 'qga', agent: channel, host: undefined, credentials: {} });
      assert.equal(s.label, 'qga libvirt:test domain vm1');
      assert.equal((await s.freeze()).frozen, 1);
      assert.equal(qga.status(), 'frozen');
      await s.thaw();
      assert.equal(qga.status(), 'thawed');
      await s.close();
      assert.deepEqual(sessionFolders(), []);
      assert.equal(commands[0], 'guest-ping');
      assert.ok(commands.includes('guest-exec') && commands.includes('guest-fsfreeze-freeze-list') && commands.includes('guest-fsfreeze-thaw'), commands.join(' '));
      assert.ok(!commands.includes('guest-sync'), 'the host syncs its channel itself');
    } finally {
      await client.close();
      await qga.close();
    }
  });
});
