import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
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
/** Runs `argv` in the guest through its agent and waits (bounded) for it; resolves its exit code and output. */
async function guestExec(vm: TestVm, argv: string[]): Promise<{ code: number; out: string }> {
  const { pid } = await vm.agent<{ pid: number }>('guest-exec', { path: argv[0], arg: argv.slice(1), 'capture-output': true });
  for (let i = 0; i < 600; i++) {
    const st = await vm.agent<{ exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }>('guest-exec-status', { pid });
    if (st.exited) return { code: st.exitcode ?? -1, out: Buffer.from(st['out-data'] ?? '', 'base64').toString() + Buffer.from(st['err-data'] ?? '', 'base64').toString() };
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${argv.join(' ')} did not finish in the guest`);
}

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
    writeFileSync(path.join(t.dir, 'fail.sh'), '#!/bin/sh\necho "no quiescing today" >&2\nexit 5\n', { mode: 0o755 });
    writeFileSync(path.join(t.dir, 'post.sh'), '#!/bin/sh\necho post done; ls /tmp\n', { mode: 0o755 });
  });

  after(async function () {
    this.timeout(60_000);
    if (vm) await guestExec(vm, ['swapoff', '-a']).catch(() => undefined);
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
        // no agent: the source host finds the agent's socket from QEMU's own chardev
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
      'skipExtents:success',
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

  it('a failing script through the agent: its exit code and output in the error, nothing frozen, the folder removed', async function () {
    this.timeout(120_000);
    const job = writeJob(
      t.dir,
      [
        'job: qga-fail',
        `source: { host: qemu, vms: [ { name: guest, qmp: "unix:${vm!.qmpSocket}", disks: [disk0], guest: { os: linux, via: qga, scripts: { preFreeze: ./fail.sh } } } ] }`,
        'repository: { type: filesystem, path: ./repo-fail }',
      ].join('\n'),
      'fail.yaml',
    );
    const r = await runFerry(['backup', job, '--json']);
    const v = json<{ vms: { status: string; error?: { code: string; message: string }; guest: GuestOut }[] }>(r).vms[0];
    expect(v.status).to.equal('failed');
    expect(v.error?.code, v.error?.message).to.equal('GUEST_STEP_FAILED');
    expect(v.error?.message).to.match(/exited with 5/).and.to.match(/no quiescing today/);
    expect(v.guest.steps.map((st) => `${st.step}:${st.status}`)).to.deep.equal(['deploy:success', 'preFreeze:failed', 'thaw:success', 'postThaw:success', 'postBackup:skipped', 'remove:success']);
    expect(await vm!.agent('guest-fsfreeze-status')).to.equal('thawed');
    const ls = await guestExec(vm!, ['ls', '/tmp']);
    expect(ls.out).to.not.match(/ferry-guest-/);
    vm!.releaseAgent();
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

  it("drops the guest's swap file: its extents (filefrag in the guest) reach the filter, its header page stays", async function () {
    this.timeout(180_000);
    // the guest's busybox has no filefrag: e2fsprogs' (it needs only libc, which the guest has)
    const handle = await vm!.agent<number>('guest-file-open', { path: '/bin/filefrag', mode: 'w' });
    await vm!.agent('guest-file-write', { handle, 'buf-b64': readFileSync('/usr/sbin/filefrag').toString('base64') });
    await vm!.agent('guest-file-close', { handle });
    const made = await guestExec(vm!, ['sh', '-c', 'chmod 755 /bin/filefrag && dd if=/dev/urandom of=/mnt/swapfile bs=1M count=8 2>/dev/null && chmod 600 /mnt/swapfile && mkswap /mnt/swapfile && swapon /mnt/swapfile && sync && cat /proc/swaps']);
    expect(made.code, made.out).to.equal(0);
    vm!.releaseAgent();
    const job = writeJob(
      t.dir,
      [
        'job: qga-swap',
        `plugins: [${path.join(ROOT, 'test', 'fixtures', 'plugins')}]`,
        'source:',
        '  host: qemu',
        '  vms:',
        `    - name: guest`,
        `      qmp: "unix:${vm!.qmpSocket}"`,
        '      disks: [disk0]',
        '      guest: { os: linux, via: qga, timeoutSeconds: 60 }',
        'filters: [zero]',
        'repository: { type: filesystem, path: ./repo-swap }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
      'swap.yaml',
    );
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const out = json<{ vms: { restorePoint: string; guest: GuestOut }[]; disks: { blocks: { filtered?: Record<string, number> }; swapBytesSkipped: number }[] }>(r);
    const step = out.vms[0].guest.steps.find((st) => st.step === 'skipExtents')!;
    expect(step.status).to.equal('success');
    expect(step.detail).to.match(/disk0: \d+ range\(s\), 8384512 bytes/); // 8 MiB without the header page
    // 8 MiB of 256 KiB blocks, less the (at most two) blocks the swap file only partly covers
    expect(out.disks[0].blocks.filtered?.['guest']).to.be.within(30, 32);
    expect(out.disks[0].swapBytesSkipped).to.equal(8384512);
    const raw = path.join(t.dir, 'restored-swap.raw');
    const rr = await runFerry(['restore', job, '--vm', 'guest', '--disk', 'disk0', '--point', out.vms[0].restorePoint, '--to', raw]);
    expect(rr.code, rr.stderr).to.equal(0);
    const fsck = await hostTool('e2fsck', ['-fn', raw]);
    expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
    const swap = Buffer.from((await hostTool('debugfs', ['-R', 'cat /swapfile', raw])).stdout, 'latin1');
    expect(swap.length).to.equal(8 * 1024 * 1024);
    expect(swap.subarray(4086, 4096).toString('latin1')).to.equal('SWAPSPACE2');
    const zeroPages = Array.from({ length: swap.length / 4096 }, (_v, i) => swap.subarray(i * 4096, (i + 1) * 4096).every((b) => b === 0)).filter(Boolean).length;
    expect(zeroPages).to.be.at.least(30 * 64); // the dropped blocks restore as zeros
  });
});
