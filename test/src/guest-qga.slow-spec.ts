import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { hostTool, skipUnlessGuestCanBoot } from './support/guest-tools.js';
import { lastWriterRound, makeDataDisk, startVm, WRITER_LAYOUT, type TestVm } from './support/test-vm.js';

interface GuestOut {
  consistency: string;
  runtime: string;
  steps: { step: string; status: string; durationMs: number; detail?: string; scripts?: { output: string }[] }[];
  freezeWindowMs: number;
}

/**
 * Guest processing through the QEMU guest agent of a real Linux guest under TCG that keeps
 * writing: the runtime deployed with guest-file-*, scripts run with guest-exec, the agent's freeze
 * around the source host's transaction only, the runtime removed; the restored ext4 is clean
 * without journal replay and holds what the preFreeze script wrote.
 */
describe('guest processing through the QEMU guest agent of a live guest (slow)', function () {
  const t = tempDir('ferry-qga-');
  let vm: TestVm | undefined;
  let report: { vms: { status: string; error?: unknown; restorePoint: string; guest: GuestOut }[] };

  before(async function () {
    await skipUnlessGuestCanBoot(this);
    const disk = path.join(t.dir, 'data.qcow2');
    await makeDataDisk(disk, 64, 'qcow2');
    vm = await startVm({ dir: path.join(t.dir, 'vm'), disk, format: 'qcow2', workload: 'writer' });
    await vm.waitForConsole((log) => lastWriterRound(log) > WRITER_LAYOUT.files + 1, 60_000);
    vm.releaseAgent();
    writeFileSync(path.join(t.dir, 'pre.sh'), '#!/bin/sh\necho "ferry pre-freeze marker" > /mnt/ferry-pre-freeze\nsync\necho pre done\n', { mode: 0o755 });
    writeFileSync(path.join(t.dir, 'post.sh'), '#!/bin/sh\necho post done; ls /tmp\n', { mode: 0o755 });
  });

  after(async function () {
    this.timeout(60_000);
    await vm?.stop();
    t.cleanup();
  });

  it('deploys through the agent, freezes only around the snapshot and removes the runtime', async function () {
    this.timeout(180_000);
    const job = writeJob(
      t.dir,
      [
        'job: qga',
        'source:',
        '  host: qemu',
        '  vms:',
        `    - name: guest`,
        `      qmp: "unix:${vm!.qmpSocket}"`,
        '      disks: [disk0]',
        '      guest:',
        '        os: linux',
        '        via: qga',
        `        agent: "unix:${vm!.qgaSocket}"`,
        '        scripts: { preFreeze: ./pre.sh, postThaw: ./post.sh }',
        '        timeoutSeconds: 60',
        'transport: auto',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    const r = await runFerry(['backup', job, '--json']);
    report = json(r);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const g = report.vms[0].guest;
    expect(g.steps.map((s) => `${s.step}:${s.status}`)).to.deep.equal([
      'deploy:success',
      'preFreeze:success',
      'freeze:success',
      'snapshot:success',
      'thaw:success',
      'postThaw:success',
      'postBackup:success',
      'remove:success',
    ]);
    expect(g.runtime).to.equal(`qga unix:${vm!.qgaSocket}`);
    expect(g.steps.find((s) => s.step === 'freeze')!.detail).to.match(/guest-fsfreeze-freeze: 1 file system/);
    expect(g.steps.find((s) => s.step === 'preFreeze')!.scripts![0].output).to.match(/pre done/);
    // the post-thaw script saw the session folder; after remove it is gone
    expect(g.steps.find((s) => s.step === 'postThaw')!.scripts![0].output).to.match(/ferry-guest-[0-9a-f]{12}/);
    const ls = await vm!.agent<{ pid: number }>('guest-exec', { path: 'ls', arg: ['/tmp'], 'capture-output': true });
    let st: { exited: boolean; 'out-data'?: string } = { exited: false };
    for (let i = 0; i < 50 && !st.exited; i++) {
      await new Promise((res) => setTimeout(res, 100));
      st = await vm!.agent('guest-exec-status', { pid: ls.pid });
    }
    expect(Buffer.from(st['out-data'] ?? '', 'base64').toString()).to.not.match(/ferry-guest-/);
    expect(await vm!.agent('guest-fsfreeze-status')).to.equal('thawed');
    vm!.releaseAgent();
    // frozen only for the transaction (and the agent's round trips), not for overlays or exports
    const frozenSteps = g.steps.filter((s) => ['freeze', 'snapshot', 'thaw'].includes(s.step)).reduce((n, s) => n + s.durationMs, 0);
    expect(g.freezeWindowMs).to.be.at.least(frozenSteps).and.to.be.below(frozenSteps + 1000);
    console.log(`      freeze window ${g.freezeWindowMs} ms (freeze ${g.steps[2].durationMs}, snapshot ${g.steps[3].durationMs}, thaw ${g.steps[4].durationMs})`);
  });

  it('the restored ext4 passes e2fsck -fn and holds what the preFreeze script wrote', async function () {
    this.timeout(120_000);
    const raw = path.join(t.dir, 'restored.raw');
    const job = path.join(t.dir, 'job.yaml');
    const r = await runFerry(['restore', job, '--vm', 'guest', '--disk', 'disk0', '--point', report.vms[0].restorePoint, '--to', raw]);
    expect(r.code, r.stderr).to.equal(0);
    const fsck = await hostTool('e2fsck', ['-fn', raw]);
    expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
    const cat = await hostTool('debugfs', ['-R', 'cat /ferry-pre-freeze', raw]);
    expect(cat.stdout).to.include('ferry pre-freeze marker');
  });
});
