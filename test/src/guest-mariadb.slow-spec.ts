import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { skipBecause, skipForMissingTools, skipUnlessTools } from '@ferry/core/testing';
import { makeLoopMount, SSHD, startSshdGuest, type LoopMount, type SshdGuest } from '@ferry/guest-common/testing';
import { freePort, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

const FIXTURE_PLUGINS = path.join(ROOT, 'test', 'fixtures', 'plugins');
const MARIADBD = '/usr/sbin/mariadbd';

/**
 * A MariaDB server (Debian's) started by the test on a loopback port, its data folder on a
 * loop-mounted ext4 (the guest's disk), reached over SSH (sshd on loopback as the guest). A writer
 * keeps inserting into an InnoDB and a MyISAM table; `ferry backup` takes FLUSH TABLES WITH READ
 * LOCK in a session held open over the freeze and the image copy, and UNLOCK TABLES after the thaw.
 * The restored server starts, holds every row committed before, and its MyISAM table checks clean.
 */
describe('MariaDB locked over SSH across the snapshot, restored and started from the point', function () {
  this.timeout(180_000);
  const t = tempDir('ferry-guest-mariadb-');
  const images = path.join(t.dir, 'images');
  let sshd: SshdGuest;
  let disk: LoopMount | undefined;
  let restored: LoopMount | undefined;
  let writer: ChildProcess | undefined;
  const servers: ChildProcess[] = [];
  let port = 0;

  const sql = (p: number, query: string): string =>
    execFileSync('mariadb', ['--no-defaults', '-h', '127.0.0.1', '-P', String(p), '-u', 'root', '--batch', '--skip-column-names', '-e', query], { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();

  async function startServer(data: string, p: number): Promise<void> {
    const log = path.join(t.dir, `mariadb-${p}.err`);
    const child = spawn(
      MARIADBD,
      ['--no-defaults', `--datadir=${data}`, `--port=${p}`, '--bind-address=127.0.0.1', `--socket=${path.join(t.dir, `m${p}.sock`)}`, `--pid-file=${path.join(t.dir, `m${p}.pid`)}`, `--log-error=${log}`, '--user=root', '--skip-name-resolve'],
      { stdio: 'ignore', detached: true },
    );
    servers.push(child);
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        sql(p, 'SELECT 1');
        return;
      } catch {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`MariaDB did not start on ${data}: ${existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : ''}`);
        await new Promise((r) => setTimeout(r, 200));
      }
    }
  }

  before(async function () {
    if (process.getuid?.() !== 0) skipBecause(this, 'needs root (sshd logs in as root; loop mounts)');
    if (!existsSync(SSHD)) skipForMissingTools(this, { sshd: 'openssh-server' });
    if (!existsSync(MARIADBD)) skipForMissingTools(this, { mariadbd: 'mariadb-server' });
    skipUnlessTools(this, { 'ssh-keygen': 'openssh-client', fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs', mariadb: 'mariadb-client', 'mariadb-install-db': 'mariadb-server' });
    sshd = await startSshdGuest(path.join(t.dir, 'sshd'));
    mkdirSync(images, { recursive: true });
    disk = makeLoopMount(t.dir, { image: path.join(images, 'db.img'), sizeMiB: 256, mountPoint: path.join(t.dir, 'guest-disk') });
    const data = path.join(disk.mountPoint, 'mysql');
    execFileSync('mariadb-install-db', ['--no-defaults', `--datadir=${data}`, '--user=root', '--auth-root-authentication-method=normal', '--skip-test-db'], { stdio: 'ignore' });
    port = await freePort();
    await startServer(data, port);
    sql(port, 'CREATE DATABASE shop');
    sql(port, 'CREATE TABLE shop.orders (id INT PRIMARY KEY, note VARCHAR(32)) ENGINE=InnoDB');
    sql(port, 'CREATE TABLE shop.audit (id INT PRIMARY KEY, note VARCHAR(32)) ENGINE=MyISAM');
    sql(port, "INSERT INTO shop.orders SELECT seq, 'before the backup' FROM shop.seq_1_to_5000");
    sql(port, "INSERT INTO shop.audit SELECT seq, 'before the backup' FROM shop.seq_1_to_5000");
    writer = spawn(
      'sh',
      ['-c', `i=100000; while :; do i=$((i+1)); mariadb --no-defaults -h 127.0.0.1 -P ${port} -u root -e "INSERT INTO shop.orders VALUES ($i, 'during'); INSERT INTO shop.audit VALUES ($i, 'during')" || exit; done`],
      { stdio: 'ignore', detached: true },
    );
  });

  after(async function () {
    if (writer?.pid) {
      try {
        process.kill(-writer.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    for (const s of servers) {
      if (s.exitCode !== null) continue;
      const gone = new Promise((r) => s.once('exit', r));
      s.kill('SIGKILL');
      await gone;
    }
    restored?.remove();
    disk?.remove();
    await sshd?.stop();
    t.cleanup();
  });

  it('holds FLUSH TABLES WITH READ LOCK across the freeze, and the restored server has every committed row', async function () {
    const job = writeJob(
      t.dir,
      [
        'job: maria',
        `plugins: [${FIXTURE_PLUGINS}]`,
        'source:',
        '  host: copy-sim',
        '  datastore: ./images',
        '  vms:',
        '    - name: db1',
        '      disks: [db.img]',
        '      guest:',
        '        os: linux',
        `        host: ${sshd.host}`,
        `        port: ${sshd.port}`,
        `        key: ${sshd.userKey}`,
        `        knownHosts: ${sshd.knownHosts}`,
        `        mounts: [${disk!.mountPoint}]`,
        `        applications: [ { name: mysql, host: 127.0.0.1, port: ${port}, user: root, client: mariadb } ]`,
        '        timeoutSeconds: 60',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
      ].join('\n'),
    );
    const before = Number(sql(port, 'SELECT count(*) FROM shop.orders'));
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const vm = json<{ vms: { restorePoint: string; guest: { applications: { name: string; step: string; status: string; method: string }[] } }[] }>(r).vms[0];
    expect(vm.guest.applications.map((a) => `${a.name} ${a.step} ${a.status} ${a.method}`)).to.deep.equal([
      'mysql preFreeze success FLUSH TABLES WITH READ LOCK',
      'mysql postThaw success UNLOCK TABLES',
    ]);
    // the server takes writes again after the backup
    const grew = Number(sql(port, 'SELECT count(*) FROM shop.orders'));
    await new Promise((res) => setTimeout(res, 500));
    expect(Number(sql(port, 'SELECT count(*) FROM shop.orders'))).to.be.above(grew - 1).and.above(before);

    const image = path.join(t.dir, 'restored.img');
    const rr = await runFerry(['restore', job, '--vm', 'db1', '--disk', 'db.img', '--point', vm.restorePoint, '--to', image]);
    expect(rr.code, rr.stderr).to.equal(0);
    execFileSync('e2fsck', ['-fn', image], { stdio: 'pipe' });
    restored = makeLoopMount(t.dir, { image, existing: true, mountPoint: path.join(t.dir, 'restored-disk') });
    // A port of the kernel's choosing, free now (a fixed neighbour of the first server's port can be
    // the local port of a client connection the writer loop left in TIME_WAIT or another test's).
    const restoredPort = await freePort();
    await startServer(path.join(restored.mountPoint, 'mysql'), restoredPort);
    expect(Number(sql(restoredPort, "SELECT count(*) FROM shop.orders WHERE note = 'before the backup'"))).to.equal(5000);
    expect(Number(sql(restoredPort, "SELECT count(*) FROM shop.audit WHERE note = 'before the backup'"))).to.equal(5000);
    // the lock had the MyISAM table flushed and closed when the image was copied: it checks clean
    expect(sql(restoredPort, 'CHECK TABLE shop.audit')).to.match(/status\s+OK/);
  });
});
