import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage } from '@ferry/core/testing';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { gatedJob, startGatedBackup } from './support/gated-backup.js';
import { repoPath } from './support/repo-inspect.js';

interface LockJson {
  id: string;
  operation: string;
  vms: string[];
  host: string;
  pid: number;
  startedAt: string;
  stale: boolean;
  staleReason: string | null;
  removed: boolean;
}

describe('repository locks between sessions', function () {
  const t = tempDir();
  const image = path.join(t.dir, 'images', 'vm.raw');
  let job: string;
  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: 8 * 1024 * 1024, seed: 51 });
    job = writeJob(t.dir, gatedJob({ job: 'locks', vm: 'web01', disk: 'vm.raw' }));
  });
  after(() => t.cleanup());

  it('a second backup of the same VM is refused while the first runs, naming its host, pid and start time', async function () {
    const first = startGatedBackup(job, image);
    try {
      await first.waiting;
      const second = await runFerry(['backup', job, '--json']);
      expect(second.code).to.equal(1);
      const err = json<{ status: string; error: { code: string; message: string } }>(second).error;
      expect(err.code).to.equal('REPO_LOCKED');
      expect(err.message).to.include(`pid ${first.child.pid}`).and.include(`host ${os.hostname()}`).and.include('backup of vm web01');
      const shown = await runFerry(['unlock', job, '--json']);
      const locks = json<{ locks: LockJson[] }>(shown).locks;
      expect(locks).to.have.length(1);
      expect(locks[0]).to.include({ operation: 'backup', pid: first.child.pid, host: os.hostname(), stale: false, removed: false });
      expect(err.message).to.include(locks[0].startedAt);
    } finally {
      first.open();
    }
    const done = await first.done;
    expect(done.code, done.stderr).to.equal(0);
    expect(readdirSync(repoPath(path.join(t.dir, 'repo'), 'locks'))).to.deep.equal([]);
  });

  it('a lock left by a killed backup is stale: the next backup goes ahead, and `ferry unlock` removes it showing its holder', async function () {
    const killed = startGatedBackup(job, image);
    await killed.waiting;
    killed.child.kill('SIGKILL');
    await killed.done;
    writeFileSync(`${image}.gate`, ''); // the next run passes its gate at once
    const next = await runFerry(['backup', job, '--json']);
    expect(next.code, next.stdout).to.equal(0);
    const r = await runFerry(['unlock', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const locks = json<{ locks: LockJson[] }>(r).locks;
    expect(locks).to.have.length(1);
    expect(locks[0]).to.include({ pid: killed.child.pid, host: os.hostname(), stale: true, removed: true });
    expect(locks[0].staleReason).to.match(/no longer runs/);
    expect(Date.parse(locks[0].startedAt)).to.be.a('number').and.not.NaN;
    const again = json<{ locks: LockJson[] }>(await runFerry(['unlock', job, '--json'])).locks;
    expect(again).to.deep.equal([]);
  });

  it('a live lock of another host is kept by `ferry unlock` unless forced; an old heartbeat makes it stale', async function () {
    const now = new Date().toISOString();
    const foreign = (id: string, heartbeatAt: string): string =>
      JSON.stringify({
        format: 'ferry-lock', version: 1, id, operation: 'backup', vms: ['web01'], job: 'locks',
        holder: { host: 'proxy-7.example', pid: 31337 }, command: 'ferry backup locks.yaml', startedAt: now, heartbeatAt,
      });
    mkdirSync(repoPath(path.join(t.dir, 'repo'), 'locks'), { recursive: true });
    writeFileSync(path.join(repoPath(path.join(t.dir, 'repo'), 'locks'), '20260101T000000Z-0000live.json'), foreign('20260101T000000Z-0000live', now));
    writeFileSync(path.join(repoPath(path.join(t.dir, 'repo'), 'locks'), '20260101T000000Z-00000old.json'), foreign('20260101T000000Z-00000old', '2020-01-01T00:00:00.000Z'));
    const refused = await runFerry(['backup', job, '--json']);
    expect(refused.code).to.equal(1);
    expect(json<{ error: { message: string } }>(refused).error.message).to.include('proxy-7.example').and.include('pid 31337');
    const shown = json<{ locks: LockJson[] }>(await runFerry(['unlock', job, '--json'])).locks;
    expect(shown.map((l) => [l.id, l.removed])).to.deep.equal([
      ['20260101T000000Z-00000old', true],
      ['20260101T000000Z-0000live', false],
    ]);
    const forced = json<{ locks: LockJson[] }>(await runFerry(['unlock', job, '--force', '20260101T000000Z-0000live', '--json'])).locks;
    expect(forced[0]).to.include({ id: '20260101T000000Z-0000live', removed: true, stale: false });
  });
});
