import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { skipUnlessTools } from '@ferry/core/testing';
import { FERRY_BIN, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';
import { initCerts } from '@ferry/core/remote/wire';
import { makeTestCerts } from '@ferry/transport-nbd/dist/test-support/tls-certs.js';
import { diskOnlyDomainXml, freePort, guestWrite, skipUnlessLibvirt, SSH_TOOLS, startLibvirtd, startSshFront, type LibvirtDaemon, type TestDomainDisk } from './support/libvirt-daemon.js';

/**
 * The libvirt source host against a private libvirtd (started here) and TCG domains with disks and
 * no OS: they idle `running`, which is all libvirt's backup API needs; the "guest's" writes go in
 * through QEMU's block layer (`guestWrite`). Each case checks the report's mode and reason and that
 * the point restores to the disk as it was (nothing writes between a backup and its restore).
 */
interface DiskJson {
  disk: string;
  status: string;
  transport: string;
  mode: string;
  modeReason: string;
  bytesRead: number;
  restorePoint: string;
  error?: { code: string; message: string };
}
interface ReportJson {
  status: string;
  source: string;
  vms: { vm: string; status: string; notes?: string[]; error?: { code: string; message: string } }[];
  disks: DiskJson[];
}

const MiB = 1024 * 1024;

describe('libvirt source host: checkpoints and pull-mode backups, end to end', function () {
  this.timeout(300_000);
  let t: ReturnType<typeof tempDir>;
  let d: LibvirtDaemon;
  let scratch: string;

  before(async function () {
    skipUnlessLibvirt(this);
    skipUnlessTools(this, { 'qemu-img': 'qemu-utils' });
    t = tempDir('ferry-libvirt-');
    scratch = path.join(t.dir, 'scratch');
    spawnSync('mkdir', ['-p', scratch]);
    d = await startLibvirtd(path.join(t.dir, 'daemon'));
  });
  after(async () => {
    await d?.stop();
    t?.cleanup();
  });

  function image(name: string, format: 'qcow2' | 'raw', sizeMiB: number, writes: [number, number, number][] = []): string {
    const file = path.join(t.dir, name);
    run('qemu-img', ['create', '-q', '-f', format, file, `${sizeMiB}M`]);
    for (const [off, len, pat] of writes) run('qemu-io', ['-f', format, '-c', `write -P ${pat} ${off} ${len}`, file]);
    return file;
  }

  function domain(name: string, disks: TestDomainDisk[], how: 'create' | 'define' = 'create', extra: Parameters<typeof diskOnlyDomainXml>[2] = {}): void {
    const file = path.join(t.dir, `${name}.xml`);
    writeFileSync(file, diskOnlyDomainXml(name, disks, extra));
    d.virsh(how, file);
    if (how === 'define') d.virsh('start', name);
  }

  function job(name: string, vm: string, disks?: string[], vms?: string, uri = d.uri, extra: string[] = []): string {
    return writeJob(
      t.dir,
      [
        `job: ${name}`,
        'source:',
        '  host: libvirt',
        `  uri: "${uri}"`,
        `  scratchDir: ${scratch}`,
        `  vms: ${vms ?? `[{ name: ${vm}${disks ? `, disks: [${disks.join(', ')}]` : ''} }]`}`,
        ...(extra.length ? extra : ['transport: auto']),
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB }',
      ].join('\n'),
      `${name}.yaml`,
    );
  }

  async function backup(jobFile: string): Promise<ReportJson> {
    const r = await runFerry(['backup', jobFile, '--json']);
    const report = json<ReportJson>(r);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    return report;
  }

  function disk(r: ReportJson, name: string): DiskJson {
    const found = r.disks.find((x) => x.disk === name);
    if (!found) throw new Error(`no disk ${name} in ${JSON.stringify(r)}`);
    return found;
  }

  /** Restores the point's disk and compares it with the domain's image as it is now. */
  async function expectRestores(jobFile: string, vm: string, dev: string, point: string, source: string): Promise<void> {
    const out = path.join(t.dir, `restored-${vm}-${dev}-${point}.raw`);
    const r = await runFerry(['restore', jobFile, '--vm', vm, '--disk', dev, '--point', point, '--to', out]);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const cmp = spawnSync('qemu-img', ['compare', '-U', '-f', 'raw', out, source], { encoding: 'utf8' });
    expect(cmp.status, `${cmp.stdout}${cmp.stderr}`).to.equal(0);
  }

  function leftoverFiles(): string[] {
    return readdirSync(scratch);
  }

  async function waitShutOff(vm: string): Promise<void> {
    for (let i = 0; i < 100 && d.virsh('domstate', vm).trim() !== 'shut off'; i++) await new Promise((r) => setTimeout(r, 100));
    expect(d.virsh('domstate', vm).trim()).to.equal('shut off');
  }

  function checkpoints(vm: string): string[] {
    return d.virsh('checkpoint-list', vm, '--name').split('\n').map((s) => s.trim()).filter(Boolean);
  }

  it('backs up a running domain in full, then incrementally; a raw disk is read in full each time, a cdrom left out', async () => {
    const a = image('web1-a.qcow2', 'qcow2', 32, [[0, 4 * MiB, 0x11], [20 * MiB, 2 * MiB, 0x12]]);
    const b = image('web1-b.raw', 'raw', 8, [[MiB, MiB, 0x21]]);
    const iso = image('web1.iso', 'raw', 1);
    domain('web1', [{ dev: 'vda', file: a, format: 'qcow2' }, { dev: 'vdb', file: b, format: 'raw' }, { dev: 'sda', file: iso, format: 'raw', device: 'cdrom', readonly: true }]);
    const jf = job('lv1', 'web1');
    const full = await backup(jf);
    expect(full.vms[0].notes!.join('\n')).to.include('disk sda left out: it is a cdrom');
    expect(disk(full, 'vda')).to.include({ mode: 'full', transport: 'nbd' });
    expect(disk(full, 'vda').modeReason).to.include('no earlier restore point');
    await expectRestores(jf, 'web1', 'vda', disk(full, 'vda').restorePoint, a);
    await expectRestores(jf, 'web1', 'vdb', disk(full, 'vdb').restorePoint, b);
    expect(checkpoints('web1')).to.have.length(1);

    guestWrite(d, 'web1', 'vda', 8 * MiB, 512 * 1024, 0x31);
    guestWrite(d, 'web1', 'vdb', 0, 4096, 0x32);
    const inc = await backup(jf);
    expect(disk(inc, 'vda').mode).to.equal('incremental');
    expect(disk(inc, 'vda').bytesRead).to.be.at.most(MiB);
    expect(disk(inc, 'vdb').mode).to.equal('full');
    expect(disk(inc, 'vdb').modeReason).to.include('only in qcow2 images');
    await expectRestores(jf, 'web1', 'vda', disk(inc, 'vda').restorePoint, a);
    await expectRestores(jf, 'web1', 'vdb', disk(inc, 'vdb').restorePoint, b);
    expect(checkpoints('web1'), 'only the newest point is counted from').to.have.length(1);
    expect(d.tryVirsh('backup-dumpxml', 'web1').status, 'the backup job ended').to.not.equal(0);
    expect(leftoverFiles()).to.deep.equal([]);
  });

  it('two jobs on one domain keep separate checkpoint chains', async () => {
    const a = image('two-a.qcow2', 'qcow2', 16, [[0, MiB, 0x41]]);
    domain('two', [{ dev: 'vda', file: a, format: 'qcow2' }]);
    const j1 = job('chain-a', 'two');
    const j2 = job('chain-b', 'two');
    expect(disk(await backup(j1), 'vda').mode).to.equal('full');
    expect(disk(await backup(j2), 'vda').mode).to.equal('full');
    guestWrite(d, 'two', 'vda', 2 * MiB, 65536, 0x42);
    const r1 = disk(await backup(j1), 'vda');
    guestWrite(d, 'two', 'vda', 4 * MiB, 65536, 0x43);
    const r2 = disk(await backup(j2), 'vda');
    expect([r1.mode, r2.mode]).to.deep.equal(['incremental', 'incremental']);
    await expectRestores(j2, 'two', 'vda', r2.restorePoint, a);
    expect(checkpoints('two').map((n) => n.split('.')[1]).sort()).to.deep.equal(['chain-a', 'chain-b']);
  });

  it('a deleted checkpoint, a resized disk, a hot-added disk each give an explained full, then incrementals again', async () => {
    const a = image('brk-a.qcow2', 'qcow2', 16, [[0, MiB, 0x51]]);
    domain('brk', [{ dev: 'vda', file: a, format: 'qcow2' }]);
    const jf = job('breaks', 'brk');
    await backup(jf);
    for (const cp of checkpoints('brk')) d.virsh('checkpoint-delete', 'brk', cp);
    const afterDelete = disk(await backup(jf), 'vda');
    expect(afterDelete.mode).to.equal('full');
    expect(afterDelete.modeReason).to.match(/checkpoint ferry\.breaks\.\S+ of the previous restore point is missing/);
    expect(disk(await backup(jf), 'vda').mode).to.equal('incremental');

    d.virsh('blockresize', 'brk', 'vda', '24M');
    guestWrite(d, 'brk', 'vda', 20 * MiB, 65536, 0x52);
    const resized = disk(await backup(jf), 'vda');
    expect(resized.mode).to.equal('full');
    expect(resized.modeReason).to.include(`was resized (${16 * MiB} → ${24 * MiB} bytes)`);
    await expectRestores(jf, 'brk', 'vda', resized.restorePoint, a);

    const c = image('brk-c.qcow2', 'qcow2', 8, [[0, MiB, 0x53]]);
    d.virsh('attach-disk', 'brk', c, 'vdc', '--driver', 'qemu', '--subdriver', 'qcow2', '--live');
    const added = await backup(jf);
    expect(disk(added, 'vda').mode).to.equal('incremental');
    expect(disk(added, 'vdc').mode).to.equal('full');
    expect(disk(added, 'vdc').modeReason).to.include('no earlier restore point of this disk');
    guestWrite(d, 'brk', 'vdc', 4 * MiB, 65536, 0x54);
    const again = await backup(jf);
    expect([disk(again, 'vda').mode, disk(again, 'vdc').mode]).to.deep.equal(['incremental', 'incremental']);
    await expectRestores(jf, 'brk', 'vdc', disk(again, 'vdc').restorePoint, c);
  });

  it('a restarted transient domain loses its checkpoints: an explained full, then incremental', async () => {
    const a = image('tr-a.qcow2', 'qcow2', 16, [[0, MiB, 0x61]]);
    const xml = path.join(t.dir, 'tr.xml');
    writeFileSync(xml, diskOnlyDomainXml('tr', [{ dev: 'vda', file: a, format: 'qcow2' }]).replace('<name>tr</name>', '<name>tr</name>\n  <uuid>6c4d1b0e-3a8f-4c52-9a61-0d1e2f3a4b5c</uuid>'));
    d.virsh('create', xml);
    const jf = job('restart', 'tr');
    await backup(jf);
    d.virsh('destroy', 'tr');
    d.virsh('create', xml);
    const r = disk(await backup(jf), 'vda');
    expect(r.mode).to.equal('full');
    expect(r.modeReason).to.include('transient domain loses its checkpoints');
    await expectRestores(jf, 'tr', 'vda', r.restorePoint, a);
    guestWrite(d, 'tr', 'vda', MiB, 65536, 0x62);
    expect(disk(await backup(jf), 'vda').mode).to.equal('incremental');
  });

  it('a persistent domain whose QEMU was killed and started again: libvirt refuses the lost bitmap, an explained full, then incremental', async () => {
    const a = image('crash-a.qcow2', 'qcow2', 16, [[0, MiB, 0xf1]]);
    domain('crash', [{ dev: 'vda', file: a, format: 'qcow2' }], 'define');
    const jf = job('crashed', 'crash');
    await backup(jf);
    guestWrite(d, 'crash', 'vda', 3 * MiB, 65536, 0xf2);
    process.kill(Number(readFileSync(path.join(d.dir, 'run', 'qemu', 'crash.pid'), 'utf8')), 'SIGKILL');
    await waitShutOff('crash');
    d.virsh('start', 'crash');
    const r = disk(await backup(jf), 'vda');
    expect(r.mode).to.equal('full');
    expect(r.modeReason).to.include('libvirt refused the incremental backup');
    await expectRestores(jf, 'crash', 'vda', r.restorePoint, a);
    expect(checkpoints('crash'), 'the lost checkpoint is gone (metadata only)').to.have.length(1);
    guestWrite(d, 'crash', 'vda', 5 * MiB, 65536, 0xf3);
    const inc = disk(await backup(jf), 'vda');
    expect(inc.mode, inc.modeReason).to.equal('incremental');
    await expectRestores(jf, 'crash', 'vda', inc.restorePoint, a);
  });

  it('a backup killed with SIGKILL while it reads: the next run cleans up after it, reads in full, then incremental', async () => {
    const raw = path.join(t.dir, 'sig-a.raw');
    run('dd', ['if=/dev/urandom', `of=${raw}`, 'bs=1M', 'count=96', 'status=none']);
    const a = path.join(t.dir, 'sig-a.qcow2');
    run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, a]);
    domain('sig', [{ dev: 'vda', file: a, format: 'qcow2' }]);
    const jf = job('sigkill', 'sig');
    await backup(jf);
    guestWrite(d, 'sig', 'vda', 0, MiB, 0xd1);
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', jf, '--json'], { stdio: 'ignore' });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    const deadline = Date.now() + 60_000;
    while (d.tryVirsh('backup-dumpxml', 'sig').status !== 0) {
      if (child.exitCode !== null || Date.now() > deadline) throw new Error('the backup ended before it could be killed');
      await new Promise((r) => setTimeout(r, 20));
    }
    child.kill('SIGKILL');
    await exited;
    expect(d.tryVirsh('backup-dumpxml', 'sig').status, 'the killed session left its backup job').to.equal(0);
    expect(checkpoints('sig')).to.have.length(2);
    const r = await backup(jf);
    const notes = r.vms[0].notes!.join('\n');
    expect(notes).to.include('aborted the backup job left running').and.include('deleted checkpoint ferry.sigkill.');
    expect(disk(r, 'vda').mode).to.equal('full');
    expect(disk(r, 'vda').modeReason).to.include("an earlier session's leftovers were cleaned");
    await expectRestores(jf, 'sig', 'vda', disk(r, 'vda').restorePoint, a);
    guestWrite(d, 'sig', 'vda', 2 * MiB, MiB, 0xd2);
    const inc = disk(await backup(jf), 'vda');
    expect(inc.mode).to.equal('incremental');
    await expectRestores(jf, 'sig', 'vda', inc.restorePoint, a);
    expect(checkpoints('sig')).to.have.length(1);
    expect(leftoverFiles()).to.deep.equal([]);
  });

  it('refuses to touch another tool\'s backup job, naming the domain', async () => {
    const a = image('busy-a.qcow2', 'qcow2', 8);
    domain('busy', [{ dev: 'vda', file: a, format: 'qcow2' }]);
    const bx = path.join(t.dir, 'busy-backup.xml');
    writeFileSync(bx, `<domainbackup mode='pull'><server transport='unix' socket='${t.dir}/other.sock'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${t.dir}/other.scratch'/></disk></disks></domainbackup>`);
    d.virsh('backup-begin', 'busy', bx);
    const r = await runFerry(['backup', job('busy', 'busy'), '--json']);
    expect(r.code).to.not.equal(0);
    const vm = json<ReportJson>(r).vms[0];
    expect(vm.error!.message).to.include('runs another backup job');
    expect(vm.error!.message).to.include('busy');
    expect(d.tryVirsh('backup-dumpxml', 'busy').status, 'the other job still runs').to.equal(0);
    d.virsh('domjobabort', 'busy');
  });

  it('names an unknown domain and an unknown disk', async () => {
    const r1 = await runFerry(['backup', job('nodom', 'no-such-domain'), '--json']);
    expect(r1.code).to.not.equal(0);
    expect(r1.stdout + r1.stderr).to.include('SOURCE_VM_NOT_FOUND');
    const a = image('nd-a.qcow2', 'qcow2', 8);
    domain('nd', [{ dev: 'vda', file: a, format: 'qcow2' }]);
    const r2 = await runFerry(['backup', job('nodisk', 'nd', ['vdz']), '--json']);
    expect(r2.stdout + r2.stderr).to.include('SOURCE_DISK_NOT_FOUND');
    expect(r2.stdout + r2.stderr).to.include('vdz');
  });

  it('a shut-off domain: incremental from the bitmap QEMU saved, in full after a crash, each said so', async () => {
    const a = image('off-a.qcow2', 'qcow2', 16, [[0, MiB, 0x81]]);
    domain('off', [{ dev: 'vda', file: a, format: 'qcow2' }], 'define');
    const jf = job('offline', 'off');
    await backup(jf);
    guestWrite(d, 'off', 'vda', 5 * MiB, 65536, 0x82);
    // a clean QEMU exit (as a guest's poweroff) saves the bitmaps into the qcow2
    d.tryVirsh('qemu-monitor-command', 'off', '--hmp', 'quit'); // the monitor may close before it answers
    await waitShutOff('off');
    const saved = await backup(jf);
    expect(disk(saved, 'vda')).to.include({ mode: 'incremental', transport: 'nbd' });
    expect(disk(saved, 'vda').bytesRead).to.be.at.most(MiB);
    expect(saved.vms[0].notes!.join('\n')).to.include('vda incrementally from bitmap ferry.offline.');
    await expectRestores(jf, 'off', 'vda', disk(saved, 'vda').restorePoint, a);
    expect(leftoverFiles(), 'qemu-nbd stopped, its socket gone').to.deep.equal([]);

    d.virsh('start', 'off');
    guestWrite(d, 'off', 'vda', 6 * MiB, 65536, 0x83);
    const back = disk(await backup(jf), 'vda');
    expect(back.mode, back.modeReason).to.equal('incremental');
    await expectRestores(jf, 'off', 'vda', back.restorePoint, a);

    // QEMU killed: the bitmaps stay marked in use in the image
    guestWrite(d, 'off', 'vda', 7 * MiB, 65536, 0x84);
    process.kill(Number(readFileSync(path.join(d.dir, 'run', 'qemu', 'off.pid'), 'utf8')), 'SIGKILL');
    await waitShutOff('off');
    const crashed = disk(await backup(jf), 'vda');
    expect(crashed).to.include({ mode: 'full', transport: 'hotadd' });
    expect(crashed.modeReason).to.include('is shut off').and.match(/holds no bitmap ferry\.offline\.\S+ \(QEMU stopped without saving it\)|marked in use/);
    await expectRestores(jf, 'off', 'vda', crashed.restorePoint, a);
    d.virsh('start', 'off');
    expect(disk(await backup(jf), 'vda').mode).to.equal('full');
    guestWrite(d, 'off', 'vda', 8 * MiB, 65536, 0x85);
    expect(disk(await backup(jf), 'vda').mode).to.equal('incremental');
  });

  it('vms: { match } backs up the domains whose names match, running or shut off', async () => {
    for (const n of ['mt-a', 'mt-b']) domain(n, [{ dev: 'vda', file: image(`${n}.qcow2`, 'qcow2', 8, [[0, 65536, 0xa1]]), format: 'qcow2' }], n === 'mt-b' ? 'define' : 'create');
    d.virsh('destroy', 'mt-b');
    domain('mt-c', [{ dev: 'sda', file: image('mt-c.iso', 'raw', 1), format: 'raw', device: 'cdrom', readonly: true }]); // nothing to back up: not taken
    const r = await backup(job('match', '', undefined, '{ match: "mt-?" }'));
    expect(r.vms.map((v) => [v.vm, v.status])).to.deep.equal([['mt-a', 'success'], ['mt-b', 'success']]);
    expect(r.disks.map((x) => x.transport)).to.deep.equal(['nbd', 'hotadd']);
    const none = await runFerry(['backup', job('nomatch', '', undefined, '{ match: "zz*" }'), '--json']);
    expect(none.code).to.not.equal(0);
    expect(none.stdout + none.stderr).to.include('SOURCE_VM_NOT_FOUND');
  });

  it('reaches a domain through qemu+ssh:// (an sshd on loopback with the test\'s own keys)', async function () {
    skipUnlessTools(this, SSH_TOOLS);
    const ssh = await startSshFront(d, path.join(t.dir, 'ssh'));
    try {
      const a = image('ssh-a.qcow2', 'qcow2', 16, [[0, MiB, 0xb1]]);
      domain('sshdom', [{ dev: 'vda', file: a, format: 'qcow2' }]);
      const jf = job('overssh', 'sshdom', undefined, undefined, ssh.uri);
      // every virsh call is an SSH connection here: one backup (its checkpoint, export, release) is enough
      const full = await backup(jf);
      expect(full.vms[0].notes!.join('\n')).to.include('running: libvirt pull-mode backup with checkpoint ferry.overssh.');
      expect(full.source).to.include('qemu+ssh://');
      await expectRestores(jf, 'sshdom', 'vda', disk(full, 'vda').restorePoint, a);
      expect(checkpoints('sshdom')).to.have.length(1);
      expect(d.tryVirsh('backup-dumpxml', 'sshdom').status, 'the backup job ended').to.not.equal(0);
    } finally {
      await ssh.stop();
    }
  });

  it('exports over TCP with TLS for readers on other machines (nbd: { host, port, tls })', async function () {
    skipUnlessTools(this, { openssl: 'openssl' });
    const certs = makeTestCerts(path.join(t.dir, 'pki'));
    const d2 = await startLibvirtd(path.join(t.dir, 'daemon-tls'), { qemuConf: `backup_tls_x509_cert_dir = "${certs.serverDir}"\nbackup_tls_x509_verify = 1\n` });
    try {
      const a = image('tls-a.qcow2', 'qcow2', 16, [[0, MiB, 0xc1]]);
      const xml = path.join(t.dir, 'tls.xml');
      writeFileSync(xml, diskOnlyDomainXml('tlsdom', [{ dev: 'vda', file: a, format: 'qcow2' }]));
      d2.virsh('create', xml);
      const port = await freePort();
      const jf = job('overtls', 'tlsdom', undefined, undefined, d2.uri, [
        `  nbd: { host: 127.0.0.1, port: ${port}, tls: true }`,
        `transport: { name: nbd, tls: { dir: ${certs.clientDir} } }`,
      ]);
      const full = await backup(jf);
      expect(full.vms[0].notes!.join('\n')).to.include(`NBD on tcp:127.0.0.1:${port} (TLS)`);
      guestWrite(d2, 'tlsdom', 'vda', 3 * MiB, 65536, 0xc2);
      const inc = disk(await backup(jf), 'vda');
      expect(inc).to.include({ mode: 'incremental', transport: 'nbd' });
      await expectRestores(jf, 'tlsdom', 'vda', inc.restorePoint, a);
      // without the client certificate the export refuses the reader: the VM fails, named
      const noCert = job('overtls', 'tlsdom', undefined, undefined, d2.uri, [`  nbd: { host: 127.0.0.1, port: ${port}, tls: true }`, `transport: { name: nbd, tls: { dir: ${certs.caOnlyDir} } }`]);
      const r = await runFerry(['backup', noCert, '--json']);
      expect(r.code).to.not.equal(0);
      expect(d2.tryVirsh('backup-dumpxml', 'tlsdom').status, 'the failed session ended its backup job').to.not.equal(0);
    } finally {
      await d2.stop();
    }
  });

  it('through a repository service and a proxy: the definition travels with the point, --define restores through the service', async () => {
    const certs = path.join(t.dir, 'svc-certs');
    await initCerts(certs);
    const services: ServiceProcess[] = [];
    try {
      services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]));
      services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'svc-repo')]));
      const a = image('svc-a.qcow2', 'qcow2', 16, [[0, MiB, 0xe1]]);
      domain('svc', [{ dev: 'vda', file: a, format: 'qcow2' }]);
      const jf = writeJob(
        t.dir,
        [
          'job: viaservice',
          `source: { host: libvirt, uri: "${d.uri}", scratchDir: ${scratch}, vms: [{ name: svc }] }`,
          'transport: auto',
          `repository: { server: "${services[1].address}" }`,
          `proxies: [{ address: "${services[0].address}" }]`,
          `certs: ${certs}`,
          'storage: { blockSize: 256KiB }',
        ].join('\n'),
        'viaservice.yaml',
      );
      expect(disk(await backup(jf), 'vda').mode).to.equal('full');
      guestWrite(d, 'svc', 'vda', 4 * MiB, 65536, 0xe2);
      const inc = disk(await backup(jf), 'vda');
      expect(inc.mode).to.equal('incremental');
      const out = path.join(t.dir, 'svc-defined');
      const r = await runFerry(['restore', jf, '--vm', 'svc', '--to', out, '--define', 'svc-copy', '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const rep = json<{ restorePoint: string; disks: { to: string }[] }>(r);
      expect(rep.restorePoint).to.equal(inc.restorePoint);
      const cmp = spawnSync('qemu-img', ['compare', '-U', '-f', 'raw', rep.disks[0].to, a], { encoding: 'utf8' });
      expect(cmp.status, cmp.stdout + cmp.stderr).to.equal(0);
      expect(d.virsh('domblklist', 'svc-copy')).to.include(rep.disks[0].to);
    } finally {
      await Promise.all(services.map((x) => x.stop()));
    }
  });

  it('restore --define makes a new domain from the saved definition: restored files, new UUID and MAC', async () => {
    const a = image('def-a.qcow2', 'qcow2', 16, [[0, MiB, 0x91], [9 * MiB, MiB, 0x92]]);
    const iso = image('def.iso', 'raw', 1);
    const mac = '52:54:00:12:34:56';
    domain('def1', [{ dev: 'vda', file: a, format: 'qcow2' }, { dev: 'sda', file: iso, format: 'raw', device: 'cdrom', readonly: true }], 'create', { mac });
    const jf = job('define', 'def1');
    const point = disk(await backup(jf), 'vda').restorePoint;
    const out = path.join(t.dir, 'defined');
    const r = await runFerry(['restore', jf, '--vm', 'def1', '--point', point, '--to', out, '--define', 'def1-copy', '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const rep = json<{ restorePoint: string; defined: { name: string; id: string; notes: string[] }; disks: { disk: string; to: string }[] }>(r);
    expect(rep.restorePoint).to.equal(point);
    expect(rep.disks.map((x) => x.to)).to.deep.equal([path.join(out, 'def1-copy-vda.raw')]);
    const cmp = spawnSync('qemu-img', ['compare', '-U', '-f', 'raw', rep.disks[0].to, a], { encoding: 'utf8' });
    expect(cmp.status, cmp.stdout + cmp.stderr).to.equal(0);
    expect(rep.defined.id).to.not.equal(d.virsh('domuuid', 'def1').trim());
    expect(d.virsh('domuuid', 'def1-copy').trim()).to.equal(rep.defined.id);
    const blk = d.virsh('domblklist', 'def1-copy', '--details');
    expect(blk).to.include(rep.disks[0].to);
    expect(blk).to.include(iso);
    const iface = d.virsh('domiflist', 'def1-copy');
    expect(iface).to.include('52:54:00');
    expect(iface).to.not.include(mac);
    d.virsh('start', 'def1-copy');
    expect(d.virsh('domstate', 'def1-copy').trim()).to.equal('running');
    const again = await runFerry(['restore', jf, '--vm', 'def1', '--to', path.join(t.dir, 'defined2'), '--define', 'def1-copy', '--json']);
    expect(again.code).to.not.equal(0);
    expect(again.stdout + again.stderr).to.include('RESTORE_TARGET_EXISTS');
    expect(existsSync(path.join(t.dir, 'defined2')), 'checked before any disk was written').to.equal(false);
  });
});

function run(cmd: string, args: string[]): void {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
}
