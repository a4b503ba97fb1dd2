import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { makeLoopMount, SSHD, startSshdGuest, type LoopMount, type SshdGuest } from '@ferry/guest-common/testing';
import { freePort, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

const FIXTURE_PLUGINS = path.join(ROOT, 'test', 'fixtures', 'plugins');

/** Debian's PostgreSQL server binaries (package postgresql: /usr/lib/postgresql/VERSION/bin), newest first. */
function pgBin(): string | undefined {
  const base = '/usr/lib/postgresql';
  if (!existsSync(base)) return undefined;
  const v = readdirSync(base).filter((d) => existsSync(path.join(base, d, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))[0];
  return v && path.join(base, v, 'bin');
}

/**
 * A PostgreSQL server (Debian's) started by the test on a loopback port, its data folder on a
 * loop-mounted ext4 (the guest's disk), reached over SSH (sshd on loopback as the guest). While a
 * writer keeps inserting, `ferry backup` quiesces it (CHECKPOINT), freezes the file system, takes the
 * point (the test source host copies the image while frozen) and thaws. The restored disk's
 * PostgreSQL starts (recovering from its WAL) and holds every row committed before the backup.
 */
describe('PostgreSQL quiesced over SSH, restored and started from the point', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-guest-pg-');
  const images = path.join(t.dir, 'images');
  const sock = path.join(t.dir, 'sock');
  let bin: string;
  let sshd: SshdGuest;
  let disk: LoopMount | undefined;
  let restored: LoopMount | undefined;
  let writer: ChildProcess | undefined;
  const servers: string[] = [];
  let port = 0;
  let ids: { uid: number; gid: number } | undefined;
  const uid = (): { uid: number; gid: number } =>
    (ids ??= { uid: Number(execFileSync('id', ['-u', 'postgres']).toString()), gid: Number(execFileSync('id', ['-g', 'postgres']).toString()) });
  const asPostgres = (cmd: string, args: string[]): string => execFileSync(cmd, args, { ...uid(), cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] }).toString();
  const psql = (p: number, sql: string): string => asPostgres(path.join(bin, 'psql'), ['-X', '-A', '-t', '-h', '127.0.0.1', '-p', String(p), '-U', 'postgres', '-d', 'postgres', '-c', sql]).trim();
  const startPg = (data: string, p: number): void => {
    const log = path.join(sock, `pg-${p}.log`);
    try {
      asPostgres(path.join(bin, 'pg_ctl'), ['start', '-w', '-t', '60', '-D', data, '-l', log, '-o', `-p ${p} -k ${sock} -c listen_addresses=127.0.0.1`]);
    } catch (err) {
      throw new Error(`PostgreSQL did not start on ${data}: ${existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : String(err)}`);
    }
    servers.push(data);
  };

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root; loop mounts; the postgres account)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    const found = pgBin();
    if (!found) skipForMissingTools(this, { initdb: 'postgresql' });
    bin = found!;
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client', fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs' });
    try {
      uid();
    } catch {
      skipBecause(this, 'no postgres account (Debian package postgresql makes it)');
    }
    chmodSync(t.dir, 0o755); // the postgres account must reach its data and socket folders
    sshd = await startSshdGuest(path.join(t.dir, 'sshd'));
    mkdirSync(images, { recursive: true });
    mkdirSync(sock, { recursive: true });
    chownSync(sock, uid().uid, uid().gid);
    disk = makeLoopMount(t.dir, { image: path.join(images, 'pg.img'), sizeMiB: 96, mountPoint: path.join(t.dir, 'guest-disk') });
    const data = path.join(disk.mountPoint, 'pgdata');
    mkdirSync(data);
    chownSync(data, uid().uid, uid().gid);
    asPostgres(path.join(bin, 'initdb'), ['--no-sync', '-A', 'trust', '-U', 'postgres', '-D', data]);
    port = await freePort();
    startPg(data, port);
    psql(port, 'CREATE TABLE rows_committed (id integer PRIMARY KEY, note text)');
    psql(port, "INSERT INTO rows_committed SELECT g, 'before the backup' FROM generate_series(1, 5000) g");
    // keeps writing (and committing) during the backup
    writer = spawn('sh', ['-c', `i=100000; while :; do i=$((i+1)); ${path.join(bin, 'psql')} -X -q -h 127.0.0.1 -p ${port} -U postgres -d postgres -c "INSERT INTO rows_committed VALUES ($i, 'during')" || exit; done`], {
      ...uid(),
      cwd: '/',
      stdio: 'ignore',
      detached: true,
    });
  });

  after(async function () {
    if (writer?.pid) {
      try {
        process.kill(-writer.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const data of servers) {
      try {
        asPostgres(path.join(bin, 'pg_ctl'), ['stop', '-m', 'immediate', '-D', data]);
      } catch {
        /* not running */
      }
    }
    restored?.remove();
    disk?.remove();
    await sshd?.stop();
    t.cleanup();
  });

  it('quiesces with CHECKPOINT, freezes only around the copy, and the restored server starts with every committed row', async function () {
    const job = writeJob(
      t.dir,
      [
        'job: pg',
        `plugins: [${FIXTURE_PLUGINS}]`,
        'source:',
        '  host: copy-sim',
        '  datastore: ./images',
        '  vms:',
        '    - name: db1',
        '      disks: [pg.img]',
        '      guest:',
        '        os: linux',
        `        host: ${sshd.host}`,
        `        port: ${sshd.port}`,
        `        key: ${sshd.userKey}`,
        `        knownHosts: ${sshd.knownHosts}`,
        `        mounts: [${disk!.mountPoint}]`,
        `        applications: [ { name: postgresql, host: 127.0.0.1, port: ${port}, user: postgres, client: ${path.join(bin, 'psql')} } ]`,
        '        timeoutSeconds: 60',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const vm = json<{ vms: { restorePoint: string; guest: { applications: { name: string; step: string; status: string; method: string }[]; steps: { step: string; status: string; detail?: string }[]; freezeWindowMs: number } }[] }>(r).vms[0];
    expect(vm.guest.applications.map((a) => `${a.name} ${a.step} ${a.status} ${a.method}`)).to.deep.equal(['postgresql preFreeze success CHECKPOINT']);
    expect(vm.guest.steps.map((s) => `${s.step}:${s.status}`)).to.deep.equal(['deploy:success', 'preFreeze:success', 'freeze:success', 'snapshot:success', 'thaw:success', 'postThaw:success', 'skipExtents:success', 'postBackup:success', 'remove:success']);
    expect(Number(psql(port, "SELECT count(*) FROM rows_committed WHERE note = 'during'"))).to.be.above(0, 'the writer went on after the thaw');

    const image = path.join(t.dir, 'restored.img');
    const rr = await runFerry(['restore', job, '--vm', 'db1', '--disk', 'pg.img', '--point', vm.restorePoint, '--to', image]);
    expect(rr.code, rr.stderr).to.equal(0);
    execFileSync('e2fsck', ['-fn', image], { stdio: 'pipe' });
    restored = makeLoopMount(t.dir, { image, existing: true, mountPoint: path.join(t.dir, 'restored-disk') });
    // the copy still names the running original server in postmaster.pid (same machine, same shared
    // memory key); a restore onto another machine would not: PostgreSQL docs leave it out of backups
    rmSync(path.join(restored.mountPoint, 'pgdata', 'postmaster.pid'));
    // A port of the kernel's choosing, free now (a fixed neighbour of the first server's port can be
    // the local port of a client connection the writer loop left in TIME_WAIT or another test's).
    const restoredPort = await freePort();
    startPg(path.join(restored.mountPoint, 'pgdata'), restoredPort);
    expect(Number(psql(restoredPort, "SELECT count(*) FROM rows_committed WHERE note = 'before the backup'"))).to.equal(5000);
    expect(psql(restoredPort, 'SELECT count(*) > 0 FROM rows_committed')).to.equal('t');
  });
});
