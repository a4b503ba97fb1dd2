import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FERRY_BIN, json, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';
import { hostTool, skipUnlessGuestCanBoot } from './support/guest-tools.js';
import { skipUnlessLibvirt, startLibvirtd, type LibvirtDaemon } from './support/libvirt-daemon.js';
import { checkWriterFile, ensureGuestImage, lastWriterRound, makeDataDisk, WRITER_LAYOUT } from './support/test-vm.js';

interface DiskJson {
  mode: string;
  modeReason: string;
  transport: string;
  bytesRead: number;
  sizeBytes: number;
  restorePoint: string;
}

/**
 * The test guest (a Linux kernel and a busybox initramfs under TCG) as a libvirt domain, writing and
 * syncing files in a loop on its ext4 data disk while Ferry backs it up through libvirt. Around each
 * snapshot the guest's file systems are frozen through libvirt (`virsh domfsfreeze`, its agent
 * channel): the frozen, flushed image is the oracle, copied with `qemu-img convert -U`; the freeze
 * ends as soon as the backup job runs, so the guest writes while Ferry reads. Each point must
 * restore byte for byte to its oracle, and the restored ext4 must pass e2fsck. Then Ferry's own
 * guest processing (`guest: { via: qga }`, no `agent:`) through libvirt's agent channel: frozen
 * around `backup-begin`, thawed after, full then incremental; last, a stopped agent.
 */
describe('libvirt: a booted guest backed up while it writes (slow)', function () {
  this.timeout(600_000);
  let t: ReturnType<typeof tempDir>;
  let d: LibvirtDaemon | undefined;
  let job = '';
  let consoleLog = '';
  const points: { id: string; oracle: string; frozenAt: number }[] = [];

  before(async function () {
    skipUnlessLibvirt(this);
    await skipUnlessGuestCanBoot(this);
    this.timeout(300_000);
    t = tempDir('ferry-lvguest-');
    const image = await ensureGuestImage();
    const disk = await makeDataDisk(path.join(t.dir, 'data.qcow2'), 64, 'qcow2');
    consoleLog = path.join(t.dir, 'console.log');
    d = await startLibvirtd(path.join(t.dir, 'daemon'));
    const xml = path.join(t.dir, 'guest.xml');
    writeFileSync(
      xml,
      `<domain type='qemu'>
  <name>guest</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${image.kernel}</kernel>
    <initrd>${image.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 ferry.workload=writer</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='${disk}'/><target dev='vda' bus='virtio'/></disk>
    <serial type='file'><source path='${consoleLog}'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
`,
    );
    d.virsh('create', xml);
    await waitFor(() => lastWriterRound(console()) > WRITER_LAYOUT.files + 1, 240_000, 'the guest writer to go round every file');
    await waitFor(() => d!.tryVirsh('qemu-agent-command', 'guest', '{"execute":"guest-ping"}').status === 0, 60_000, 'the guest agent');
    job = writeJob(
      t.dir,
      [
        'job: lvguest',
        'source:',
        '  host: libvirt',
        `  uri: "${d.uri}"`,
        `  scratchDir: ${t.dir}`,
        '  vms: [{ name: guest }]',
        'transport: auto',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB }',
      ].join('\n'),
    );
  });
  after(async function () {
    this.timeout(60_000);
    await d?.stop();
    t?.cleanup();
  });

  function console(): string {
    return existsSync(consoleLog) ? readFileSync(consoleLog, 'utf8') : '';
  }

  /** Freeze, copy the oracle, start the backup, thaw once libvirt's backup job runs; the backup's vda report. */
  async function backupWhileWriting(n: number): Promise<DiskJson> {
    d!.virsh('domfsfreeze', 'guest');
    expect(JSON.parse(d!.virsh('qemu-agent-command', 'guest', '{"execute":"guest-fsfreeze-status"}')).return).to.equal('frozen');
    let thawed = false;
    const thaw = (): void => {
      if (!thawed) d!.virsh('domfsthaw', 'guest');
      thawed = true;
    };
    const frozenAt = lastWriterRound(console());
    const oracle = path.join(t.dir, `oracle-${n}.raw`);
    const run = (async (): Promise<CliResult> => {
      try {
        const conv = spawnSync('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', path.join(t.dir, 'data.qcow2'), oracle], { encoding: 'utf8' });
        if (conv.status !== 0) throw new Error(`qemu-img convert: ${conv.stderr}`);
        const child = spawn(process.execPath, [FERRY_BIN, 'backup', job, '--json'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderr = '';
        child.stdout.on('data', (b) => (stdout += b));
        child.stderr.on('data', (b) => (stderr += b));
        const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr })));
        const deadline = Date.now() + 120_000;
        while (Date.now() < deadline && child.exitCode === null && d!.tryVirsh('backup-dumpxml', 'guest').status !== 0) await sleep(50);
        thaw();
        return await done;
      } finally {
        thaw();
      }
    })();
    const r = await run;
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const disk = json<{ disks: DiskJson[] }>(r).disks[0];
    points.push({ id: disk.restorePoint, oracle, frozenAt });
    return disk;
  }

  it('a full backup, then an incremental one, each while the guest writes', async () => {
    const full = await backupWhileWriting(1);
    expect(full).to.include({ mode: 'full', transport: 'nbd' });
    const before = lastWriterRound(console());
    await waitFor(() => lastWriterRound(console()) >= before + 2, 120_000, 'the guest to write on');
    const inc = await backupWhileWriting(2);
    expect(inc.mode, inc.modeReason).to.equal('incremental');
    expect(inc.bytesRead).to.be.lessThan(inc.sizeBytes / 4);
    expect(lastWriterRound(console()), 'the guest kept writing').to.be.greaterThan(points[1].frozenAt);
  });

  it("the host reaches the guest's agent through libvirt, for guest processing", async () => {
    const { JobRuntime } = await import('@ferry/core');
    const { LibvirtSourceHost } = await import('@ferry/source-libvirt');
    const rt = await JobRuntime.open(job);
    try {
      const host = (await rt.sourceHost()) as InstanceType<typeof LibvirtSourceHost>;
      const [inv] = await host.inventory(rt.spec.source.vms);
      expect(inv.notes!.join('\n')).to.include('guest agent channel: unix ');
      expect(host.agentChannel('guest')).to.include({ type: 'unix', state: 'connected' });
      expect(await host.agentCommand('guest', 'guest-ping')).to.deep.equal({});
      expect(await host.agentCommand('guest', 'guest-fsfreeze-status')).to.equal('thawed');
      const err = await host.agentCommand('guest', 'guest-no-such-command').then(() => undefined, (e: unknown) => e as { code?: string; message: string });
      expect(err?.code).to.equal('SOURCE_COMMAND_FAILED');
      expect(err?.message).to.include('guest-no-such-command');
      // the channel the session gets for `via: qga` without `agent:`
      const ch = await host.guestAgent('guest');
      expect(ch).to.not.be.a('string');
      const channel = ch as Exclude<typeof ch, string | undefined>;
      expect(channel.label).to.equal(`qga libvirt:${d!.uri} domain guest`);
      expect(await channel.execute('guest-ping', undefined, 10_000)).to.deep.equal({});
      const refused = await channel.execute('guest-no-such-command').then(() => undefined, (e: unknown) => e as { code?: string; message: string });
      expect(refused?.code).to.equal('GUEST_STEP_FAILED');
      expect(refused?.message).to.include('domain guest').and.to.include('guest-no-such-command');
    } finally {
      await rt.close();
    }
  });

  it('each point restores byte for byte to the frozen disk, and its ext4 passes e2fsck', async () => {
    expect(points).to.have.length(2);
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}.raw`);
      const r = await runFerry(['restore', job, '--vm', 'guest', '--disk', 'vda', '--point', p.id, '--to', out]);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const cmp = spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', out, p.oracle], { encoding: 'utf8' });
      expect(cmp.status, `${p.id}: ${cmp.stdout}${cmp.stderr}`).to.equal(0);
      const fsck = await hostTool('e2fsck', ['-fn', out]);
      expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
      const rounds: number[] = [];
      for (let f = 0; f < WRITER_LAYOUT.files; f++) {
        const cat = await hostTool('debugfs', ['-R', `cat /${WRITER_LAYOUT.dir}/w${String(f).padStart(2, '0')}.dat`, out]);
        rounds.push(checkWriterFile(Buffer.from(cat.stdout, 'latin1'), f));
      }
      expect(Math.max(...rounds), `${p.id}: the newest round in the point`).to.be.within(p.frozenAt, p.frozenAt + 1);
    }
  });

  it('guest processing through libvirt (via: qga, no agent:): frozen around the checkpoint, thawed after, full then incremental, clean ext4', async function () {
    this.timeout(240_000);
    const qgaJob = writeJob(
      t.dir,
      [
        'job: lvguest-qga',
        'source:',
        '  host: libvirt',
        `  uri: "${d!.uri}"`,
        `  scratchDir: ${t.dir}`,
        '  vms:',
        '    - name: guest',
        // no agent: libvirtd holds the agent's socket; the source host hands over its channel
        '      guest: { os: linux, via: qga, timeoutSeconds: 60 }',
        'repository: { type: filesystem, path: ./repo-qga }',
        'storage: { blockSize: 256KiB }',
      ].join('\n'),
      'qga.yaml',
    );
    type GuestJson = { consistency: string; runtime: string; freezeWindowMs: number | null; steps: { step: string; status: string; durationMs: number; detail?: string }[] };
    /** One backup with guest processing; its point, disk and guest reports, the guest checked thawed. */
    const backup = async (): Promise<{ point: string; disk: DiskJson; g: GuestJson }> => {
      const r = await runFerry(['backup', qgaJob, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const out = json<{ vms: { restorePoint: string; guest: GuestJson }[]; disks: DiskJson[] }>(r);
      const g = out.vms[0].guest;
      expect(g.runtime).to.equal(`qga libvirt:${d!.uri} domain guest`);
      expect(g.steps.filter((s) => s.status !== 'success' && s.status !== 'skipped'), JSON.stringify(g.steps)).to.deep.equal([]);
      expect(g.steps.map((s) => s.step)).to.include.members(['deploy', 'freeze', 'snapshot', 'thaw', 'remove']);
      expect(g.steps.find((s) => s.step === 'freeze')!.detail).to.match(/guest-fsfreeze-freeze: 1 file system/);
      expect(g.consistency).to.equal('application');
      expect(g.freezeWindowMs).to.be.a('number').and.to.be.greaterThan(0);
      globalThis.console.log(`      ${out.disks[0].mode}: freeze window ${g.freezeWindowMs} ms (${g.steps.filter((s) => ['freeze', 'snapshot', 'thaw'].includes(s.step)).map((s) => `${s.step} ${s.durationMs}`).join(', ')})`);
      // thawed: the agent says so
      expect(JSON.parse(d!.virsh('qemu-agent-command', 'guest', '{"execute":"guest-fsfreeze-status"}')).return).to.equal('thawed');
      return { point: out.vms[0].restorePoint, disk: out.disks[0], g };
    };
    const first = await backup();
    expect(first.disk.mode).to.equal('full');
    // a write in the guest through the agent finishes (nothing frozen), and the runtime is gone
    const wrote = await guestExec(['sh', '-c', 'echo after the backup > /mnt/ferry-after-thaw && sync && cat /mnt/ferry-after-thaw && ls /tmp']);
    expect(wrote.code, wrote.out).to.equal(0);
    expect(wrote.out).to.include('after the backup').and.not.match(/ferry-guest-/);
    // the prepared snapshot keeps the job's checkpoint chain: the next run is incremental
    const second = await backup();
    expect(second.disk.mode, second.disk.modeReason).to.equal('incremental');
    for (const p of [first, second]) {
      const raw = path.join(t.dir, `restored-qga-${p.point}.raw`);
      const rr = await runFerry(['restore', qgaJob, '--vm', 'guest', '--disk', 'vda', '--point', p.point, '--to', raw]);
      expect(rr.code, rr.stdout + rr.stderr).to.equal(0);
      const fsck = await hostTool('e2fsck', ['-fn', raw]);
      expect(fsck.code, fsck.stdout + fsck.stderr).to.equal(0);
      // written and synced after the first point: in the second
      if (p === second) expect((await hostTool('debugfs', ['-R', 'cat /ferry-after-thaw', raw])).stdout).to.include('after the backup');
    }
  });

  it("an agent that stopped: GUEST_UNREACHABLE naming the domain; with onGuestFailure: continue a crash-consistent point", async function () {
    this.timeout(180_000);
    // last in this suite: qemu-ga is not started again in the test guest
    const killed = await guestExec(['sh', '-c', '(sleep 1; kill $(cat /var/run/qemu-ga.pid)) </dev/null >/dev/null 2>&1 &']);
    expect(killed.code, killed.out).to.equal(0);
    await waitFor(() => d!.tryVirsh('qemu-agent-command', 'guest', '{"execute":"guest-ping"}').status !== 0, 30_000, 'the guest agent to stop');
    const job = (onGuestFailure: string, name: string): string =>
      writeJob(
        t.dir,
        [
          `job: lvguest-${name}`,
          `source: { host: libvirt, uri: "${d!.uri}", scratchDir: ${t.dir}, vms: [ { name: guest, guest: { os: linux, via: qga, timeoutSeconds: 20, onGuestFailure: ${onGuestFailure} } } ] }`,
          `repository: { type: filesystem, path: ./repo-${name} }`,
          'storage: { blockSize: 256KiB }',
        ].join('\n'),
        `${name}.yaml`,
      );
    type VmJson = { status: string; error?: { code: string; message: string }; restorePoint?: string; guest: { consistency: string; steps: { step: string; status: string; error?: { code: string; message: string } }[] } };
    const failed = json<{ vms: VmJson[] }>(await runFerry(['backup', job('fail', 'gone-fail'), '--json'])).vms[0];
    expect(failed.status).to.equal('failed');
    expect(failed.error?.code).to.equal('GUEST_UNREACHABLE');
    expect(failed.error?.message).to.include('domain guest');
    const r = await runFerry(['backup', job('continue', 'gone-continue'), '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const v = json<{ vms: VmJson[] }>(r).vms[0];
    expect(v.status).to.not.equal('failed');
    expect(v.restorePoint).to.be.a('string');
    expect(v.guest.consistency).to.equal('crash');
    const deploy = v.guest.steps.find((s) => s.step === 'deploy')!;
    expect(deploy.status).to.equal('failed');
    expect(deploy.error?.code).to.equal('GUEST_UNREACHABLE');
  });

  /** Runs `argv` in the guest through libvirt's agent channel, waiting (bounded) for it to exit. */
  async function guestExec(argv: string[]): Promise<{ code: number; out: string }> {
    const agent = <T>(execute: string, args: object): T => (JSON.parse(d!.virsh('qemu-agent-command', 'guest', JSON.stringify({ execute, arguments: args }))) as { return: T }).return;
    const { pid } = agent<{ pid: number }>('guest-exec', { path: argv[0], arg: argv.slice(1), 'capture-output': true });
    for (let i = 0; i < 300; i++) {
      const st = agent<{ exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string }>('guest-exec-status', { pid });
      if (st.exited) return { code: st.exitcode ?? -1, out: Buffer.from(st['out-data'] ?? '', 'base64').toString() + Buffer.from(st['err-data'] ?? '', 'base64').toString() };
      await sleep(100);
    }
    throw new Error(`${argv.join(' ')} did not finish in the guest within 30 s`);
  }
});

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(250);
  }
}
