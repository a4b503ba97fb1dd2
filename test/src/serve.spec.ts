import { execFile, spawn } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { changeVmImage, makeVmImage, Prng, skipBecause, skipUnlessTools } from '@ferry/core/testing';
import { flipBit, pointDisks, storedBlocks } from './support/repo-inspect.js';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';

const run = promisify(execFile);
const MiB = 1024 * 1024;
const TOOLS = { 'qemu-img': 'qemu-utils', 'qemu-io': 'qemu-utils', 'qemu-nbd': 'qemu-utils', nbdinfo: 'libnbd-bin', nbdcopy: 'libnbd-bin', openssl: 'openssl' };

/** `nbd+unix` URI of an export on a unix socket (`nbds+unix` with TLS certificates in qemu/libnbd layout). */
function uri(sock: string, name = 'vm.raw', tlsDir?: string): string {
  return tlsDir ? `nbds+unix:///${name}?socket=${sock}&tls-certificates=${tlsDir}` : `nbd+unix:///${name}?socket=${sock}`;
}

async function sh(cmd: string, args: string[]): Promise<string> {
  const { stdout } = await run(cmd, args, { maxBuffer: 64 * MiB, timeout: 60_000 });
  return stdout;
}

/** `nbdinfo --map` as ranges: [{offset, length, hole}]. */
async function map(u: string): Promise<{ offset: number; length: number; hole: boolean }[]> {
  const out = await sh('nbdinfo', ['--map', '--json', u]);
  return (JSON.parse(out) as { offset: number; length: number; type: number }[]).map((e) => ({ offset: e.offset, length: e.length, hole: (e.type & 1) === 1 }));
}

/**
 * `ferry serve`: restore points as NBD exports, checked with the reference clients (qemu-img,
 * qemu-io, nbdinfo, nbdcopy), read-only and writable, plain and over TLS, embedded and through a
 * repository service.
 */
describe('ferry serve: a restore point as an NBD export', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-serve-');
  const image = path.join(t.dir, 'images', 'vm.raw');
  let job: string;
  const points: { id: string; file: string }[] = [];
  const services: ServiceProcess[] = [];
  const serve = async (...args: string[]): Promise<ServiceProcess> => {
    const s = await startService(['serve', job, '--vm', 'web01', '--disk', 'vm.raw', ...args]);
    services.push(s);
    return s;
  };
  const sock = (name: string): string => path.join(t.dir, `${name}.sock`);

  before(async function () {
    skipUnlessTools(this, TOOLS);
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: 12 * MiB + 4096 + 512, seed: 77, holes: 0.3 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'] }));
    for (let i = 0; i < 2; i++) {
      if (i) await changeVmImage(image, { count: 12, length: 20_000, seed: 5 });
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      const file = path.join(t.dir, `point${i}.raw`);
      copyFileSync(image, file);
      points.push({ id: '', file });
    }
    const listed = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    listed.restorePoints.forEach((p, i) => (points[i]!.id = p.id));
  });
  afterEach(async function () {
    await Promise.all(services.splice(0).map((s) => s.stop()));
  });
  after(() => t.cleanup());

  it('serves a full and an incremental point at once: qemu-img compare, nbdcopy and nbdinfo --map from several clients', async function () {
    const a = await serve('--point', points[0]!.id, '--listen', `unix:${sock('full')}`);
    const b = await serve('--listen', `unix:${sock('incr')}`);
    expect(a.address).to.equal(`unix:${sock('full')}`);
    expect(b.address).to.equal(`unix:${sock('incr')}`);
    const checks = [
      { u: uri(sock('full')), file: points[0]!.file },
      { u: uri(sock('incr')), file: points[1]!.file },
    ];
    await Promise.all(
      checks.flatMap(({ u, file }, i) => [
        sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, u]),
        sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, u]),
        sh('nbdcopy', [u, path.join(t.dir, `copy${i}.raw`)]),
        sh('nbdcopy', ['--connections=4', u, path.join(t.dir, `copy${i}b.raw`)]),
      ]),
    );
    for (const i of [0, 1]) {
      const want = readFileSync(checks[i]!.file);
      expect(readFileSync(path.join(t.dir, `copy${i}.raw`)).equals(want)).to.equal(true);
      expect(readFileSync(path.join(t.dir, `copy${i}b.raw`)).equals(want)).to.equal(true);
      // base:allocation: the holes are zeros of the point, and the map covers the disk.
      const ranges = await map(checks[i]!.u);
      expect(ranges.reduce((n, r) => n + r.length, 0)).to.equal(want.length);
      const holes = ranges.filter((r) => r.hole);
      expect(holes.length).to.be.greaterThan(0);
      for (const h of holes) expect(want.subarray(h.offset, h.offset + h.length).every((x) => x === 0)).to.equal(true);
    }
    const info = await sh('nbdinfo', ['--list', uri(sock('incr'), '')]);
    expect(info).to.include('export="vm.raw"').and.to.include(points[1]!.id);
  });

  it('a read-only export refuses writes (EPERM) and the default export is the disk', async function () {
    await serve('--listen', `unix:${sock('ro')}`);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x55 0 4096', uri(sock('ro'), '')]).then(
      (r) => r.stdout + r.stderr,
      (err: { stdout: string; stderr: string }) => err.stdout + err.stderr,
    );
    expect(w).to.match(/not permitted|read-only|Permission denied/i);
    await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', points[1]!.file, uri(sock('ro'), '')]);
  });

  it('over TLS: clients with a certificate of the CA read; clients without TLS or of another CA are refused', async function () {
    const certs = path.join(t.dir, 'certs');
    await initCerts(certs);
    const client = path.join(t.dir, 'client-tls');
    mkdirSync(client);
    copyFileSync(path.join(certs, 'ca.crt'), path.join(client, 'ca-cert.pem'));
    copyFileSync(path.join(certs, 'proxy.crt'), path.join(client, 'client-cert.pem'));
    copyFileSync(path.join(certs, 'proxy.key'), path.join(client, 'client-key.pem'));
    await serve('--listen', `unix:${sock('tls')}`, '--certs', certs);
    await Promise.all([
      sh('nbdcopy', [uri(sock('tls'), 'vm.raw', client), path.join(t.dir, 'tls.raw')]),
      run('qemu-img', [
        'compare', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${client}`, '--image-opts',
        `driver=raw,file.driver=file,file.filename=${points[1]!.file}`,
        `driver=nbd,server.type=unix,server.path=${sock('tls')},export=vm.raw,tls-creds=tls0,tls-hostname=server`,
      ]),
    ]);
    expect(readFileSync(path.join(t.dir, 'tls.raw')).equals(readFileSync(points[1]!.file))).to.equal(true);
    await run('nbdinfo', [uri(sock('tls'))]).then(
      () => expect.fail('a client without TLS was served'),
      (err: { stderr: string }) => expect(err.stderr).to.match(/TLS|not supported|required/i),
    );
    const other = path.join(t.dir, 'other-certs');
    await initCerts(other);
    const stranger = path.join(t.dir, 'stranger-tls');
    mkdirSync(stranger);
    copyFileSync(path.join(certs, 'ca.crt'), path.join(stranger, 'ca-cert.pem'));
    copyFileSync(path.join(other, 'proxy.crt'), path.join(stranger, 'client-cert.pem'));
    copyFileSync(path.join(other, 'proxy.key'), path.join(stranger, 'client-key.pem'));
    await run('nbdinfo', [uri(sock('tls'), 'vm.raw', stranger)]).then(() => expect.fail('a certificate of another CA was accepted'), () => undefined);
  });

  it('--writable: qemu-io writes land in the overlay, never in the repository; --commit-to copies point + writes', async function () {
    const overlay = path.join(t.dir, 'overlay');
    const expected = path.join(t.dir, 'expected.raw');
    copyFileSync(points[1]!.file, expected);
    const writes = ['write -P 0xab 1000 70000', 'write -z 5000000 3000000', 'write -P 0x11 12587000 520', 'write -P 0x3c 8388608 1048576'];
    const io = (target: string, ...extra: string[]): Promise<string> => sh('qemu-io', ['-f', 'raw', ...writes.flatMap((w) => ['-c', w]), ...extra, target]);
    await io(expected);
    const s = await serve('--listen', `unix:${sock('rw')}`, '--writable', '--overlay', overlay);
    await io(uri(sock('rw')), '-c', 'flush');
    await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, uri(sock('rw'))]);
    await s.stop();
    // The repository is unchanged: it verifies, and a fresh read-only export serves the point as backed up.
    const v = await runFerry(['verify', job]);
    expect(v.code, v.stdout + v.stderr).to.equal(0);
    await serve('--listen', `unix:${sock('fresh')}`);
    await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', points[1]!.file, uri(sock('fresh'))]);
    // The overlay serves its writes again, and --commit-to copies the view while the export serves.
    const out = path.join(t.dir, 'committed.raw');
    const c = await serve('--listen', `unix:${sock('commit')}`, '--writable', '--overlay', overlay, '--commit-to', out, '--json');
    await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, uri(sock('commit'))]);
    const deadline = Date.now() + 30_000;
    while (!/"event":"committed"/.test(c.stdout()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(c.stdout()).to.match(/"event":"committed"/);
    expect(readFileSync(out).equals(readFileSync(expected))).to.equal(true);
    await sh('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', expected, uri(sock('commit'))]);
    await c.stop();
    // An NBD target (qemu-nbd over a file of the disk's size) takes the same view.
    const tgt = path.join(t.dir, 'nbd-target.raw');
    writeFileSync(tgt, '');
    await run('truncate', ['-s', String(readFileSync(expected).length), tgt]);
    const qn = spawn('qemu-nbd', ['-f', 'raw', '-x', 'tgt', '-k', sock('tgt'), tgt], { stdio: 'ignore' });
    try {
      for (let i = 0; i < 100 && !existsSync(sock('tgt')); i++) await new Promise((r) => setTimeout(r, 50));
      const n = await serve('--listen', `unix:${sock('commit2')}`, '--writable', '--overlay', overlay, '--commit-to', `nbd+unix:///tgt?socket=${sock('tgt')}`, '--json');
      const until = Date.now() + 30_000;
      while (!/"event":"committed"/.test(n.stdout()) && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
      expect(n.stdout()).to.match(/"event":"committed"/);
    } finally {
      qn.kill();
    }
    expect(readFileSync(tgt).equals(readFileSync(expected))).to.equal(true);
    // An existing target without --force is refused, as restore refuses it.
    writeFileSync(path.join(t.dir, 'taken.raw'), 'x');
    const refused = await runFerry(['serve', job, '--vm', 'web01', '--disk', 'vm.raw', '--listen', `unix:${sock('taken')}`, '--writable', '--overlay', overlay, '--commit-to', path.join(t.dir, 'taken.raw'), '--json']);
    expect(refused.stdout).to.match(/RESTORE_TARGET_EXISTS/);
  });

  it('refuses an overlay of another point, an unknown disk, and a socket in use, with coded errors', async function () {
    const overlay = path.join(t.dir, 'overlay-old');
    const a = await serve('--point', points[0]!.id, '--listen', `unix:${sock('o1')}`, '--writable', '--overlay', overlay);
    await a.stop();
    const wrong = await runFerry(['serve', job, '--vm', 'web01', '--disk', 'vm.raw', '--listen', `unix:${sock('o2')}`, '--writable', '--overlay', overlay, '--json']);
    expect(json<{ error: { code: string } }>(wrong).error.code).to.equal('SERVE_OVERLAY');
    const disk = await runFerry(['serve', job, '--vm', 'web01', '--disk', 'nope.raw', '--listen', `unix:${sock('o3')}`, '--json']);
    expect([disk.code, json<{ error: { code: string } }>(disk).error.code]).to.deep.equal([2, 'RESTORE_NOT_FOUND']);
    await serve('--listen', `unix:${sock('busy')}`);
    const busy = await runFerry(['serve', job, '--vm', 'web01', '--disk', 'vm.raw', '--listen', `unix:${sock('busy')}`, '--json']);
    expect(json<{ error: { code: string } }>(busy).error.code).to.equal('SERVE_LISTEN');
  });

  it('a damaged block answers its reads with EIO and names object and offset in the log; other blocks are served', async function () {
    cpSync(path.join(t.dir, 'repo'), path.join(t.dir, 'repo-damaged'), { recursive: true });
    const damagedJob = writeJob(t.dir, basicJob({ disks: ['vm.raw'], repo: './repo-damaged' }), 'damaged.yaml');
    const disk = pointDisks(path.join(t.dir, 'repo-damaged')).find((d) => d.point === points[1]!.id)!;
    const i = disk.hashes.findIndex((h, n) => h && disk.hashes.indexOf(h) === n && n > 0);
    flipBit(storedBlocks(path.join(t.dir, 'repo-damaged')).find((b) => b.hash === disk.hashes[i])!, new Prng(3));
    const s = await startService(['serve', damagedJob, '--vm', 'web01', '--disk', 'vm.raw', '--listen', `unix:${sock('damaged')}`]);
    services.push(s);
    const bad = await run('qemu-io', ['-f', 'raw', '-r', '-c', `read ${i * disk.blockSize} 4096`, uri(sock('damaged'))]).then(
      (r) => r.stdout + r.stderr,
      (err: { stdout: string; stderr: string }) => err.stdout + err.stderr,
    );
    expect(bad).to.match(/Input\/output error/);
    expect(s.stderr()).to.include('REPO_CORRUPT_OBJECT').and.to.include(`offset ${i * disk.blockSize}`);
    const good = await sh('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 4096', uri(sock('damaged'))]);
    expect(good).to.match(/read 4096\/4096 bytes/);
  });

  it('ferry mount says clearly when the kernel nbd module is not there (MOUNT_UNAVAILABLE)', async function () {
    if (existsSync('/sys/module/nbd')) skipBecause(this, 'the kernel nbd module is loaded here: attaching a device is left to a manual check (root, a free /dev/nbdN)');
    const r = await runFerry(['mount', job, '--vm', 'web01', '--disk', 'vm.raw', '--json']);
    expect(r.code).to.equal(1);
    const { error } = json<{ error: { code: string; message: string } }>(r);
    expect(error.code).to.equal('MOUNT_UNAVAILABLE');
    expect(error.message).to.include('nbd module').and.to.include('ferry serve');
  });

  it('serves through a repository service (repository.server in the job)', async function () {
    const certs = path.join(t.dir, 'svc-certs');
    await initCerts(certs);
    cpSync(path.join(t.dir, 'repo'), path.join(t.dir, 'repo-copy'), { recursive: true });
    const svc = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo-copy')]);
    services.push(svc);
    const remote = writeJob(
      t.dir,
      basicJob({ disks: ['vm.raw'] }).replace(/repository:\n {2}type: filesystem\n {2}path: \.\/repo/, `repository:\n  server: "${svc.address}"\nproxies:\n  - address: "127.0.0.1:1"\ncerts: ./svc-certs`),
      'remote.yaml',
    );
    services.push(await startService(['serve', remote, '--vm', 'web01', '--disk', 'vm.raw', '--point', points[0]!.id, '--listen', `unix:${sock('remote')}`]));
    await sh('nbdcopy', [uri(sock('remote')), path.join(t.dir, 'remote.raw')]);
    expect(readFileSync(path.join(t.dir, 'remote.raw')).equals(readFileSync(points[0]!.file))).to.equal(true);
  });
});
