import os from 'node:os';
import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { MemoryBackend } from '../testing/memory-backend.js';
import { conflicts, listLocks, lockKey, staleness, type LockRecord } from './lock-record.js';
import { RepositoryLock } from './repository-lock.js';
import { Repository } from './repository.js';

function foreignLock(over: Partial<LockRecord> = {}): LockRecord {
  const now = new Date().toISOString();
  return {
    format: 'ferry-lock',
    version: 1,
    id: '20260101T000000Z-0badc0de',
    operation: 'backup',
    vms: ['web01'],
    job: 'nightly',
    holder: { host: 'other-host.example', pid: 4242 },
    command: 'ferry backup nightly.yaml',
    startedAt: now,
    heartbeatAt: now,
    ...over,
  };
}

async function put(b: MemoryBackend, r: LockRecord): Promise<void> {
  await b.put(lockKey(r.id), Buffer.from(JSON.stringify(r)));
}

describe('repository locks', function () {
  it('conflict rules: one VM chain, gc against gc and prune, verify against verify', function () {
    const l = (operation: LockRecord['operation'], vms: string[] = []): Pick<LockRecord, 'operation' | 'vms'> => ({ operation, vms });
    expect(conflicts(l('backup', ['a']), l('backup', ['a', 'b']))).to.equal(true);
    expect(conflicts(l('backup', ['a']), l('backup', ['b']))).to.equal(false);
    expect(conflicts(l('backup', ['a']), l('prune', ['a']))).to.equal(true);
    expect(conflicts(l('gc'), l('prune', ['a']))).to.equal(true);
    expect(conflicts(l('gc'), l('gc'))).to.equal(true);
    expect(conflicts(l('gc'), l('backup', ['a']))).to.equal(false); // the condemn/sweep protocol makes this safe
    expect(conflicts(l('verify'), l('verify'))).to.equal(true);
    expect(conflicts(l('restore', ['a']), l('prune', ['a']))).to.equal(false);
    for (const op of ['backup', 'prune', 'forget', 'gc', 'verify', 'restore', 'key', 'upgrade'] as const) {
      expect(conflicts(l('upgrade'), l(op, ['a'])), `upgrade against ${op}`).to.equal(true);
    }
  });

  it('a process that opened the repository before an upgrade stops when it takes its lock', async function () {
    const b = new MemoryBackend();
    const repo = await Repository.open(b, { create: true, settings: { format: 1 } });
    const config = JSON.parse(Buffer.from(await b.get('ferry-repository.json')).toString('utf8'));
    await b.put('ferry-repository.json', Buffer.from(JSON.stringify({ ...config, version: 2 }))); // what an upgrade commits
    const err = await RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: ['a'] }).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_FORMAT_UNSUPPORTED');
    expect([...b.objects.keys()].filter((k) => k.startsWith('locks/')), 'its lock object is removed').to.deep.equal([]);
  });

  it('a second backup of the same VM is refused with REPO_LOCKED naming host, pid and start time', async function () {
    const b = new MemoryBackend();
    const held = foreignLock();
    await put(b, held);
    const err = await RepositoryLock.acquire(b, { operation: 'backup', vms: ['web01'] }).catch((e: FerryError) => e);
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('REPO_LOCKED');
    expect((err as FerryError).message).to.include('other-host.example').and.include('pid 4242').and.include(held.startedAt);
    expect([...b.objects.keys()]).to.deep.equal([lockKey(held.id)]); // ours was taken back
    const other = await RepositoryLock.acquire(b, { operation: 'backup', vms: ['db01'] });
    await other.release();
  });

  it('ignores a stale lock: same host and the pid is gone, or no heartbeat for the timeout', async function () {
    const b = new MemoryBackend();
    const dead = foreignLock({ id: 'dead', holder: { host: os.hostname(), pid: 2 ** 22 + 12345 } });
    const old = new Date(Date.now() - 3600_000).toISOString();
    const silent = foreignLock({ id: 'silent', heartbeatAt: old });
    await put(b, dead);
    await put(b, silent);
    expect(staleness(dead, Date.now())).to.match(/no longer runs/);
    expect(staleness(silent, Date.now())).to.match(/no heartbeat for 3600 s/);
    const lock = await RepositoryLock.acquire(b, { operation: 'backup', vms: ['web01'] });
    expect(lock.ignoredStale.map((l) => l.record?.id).sort()).to.deep.equal(['dead', 'silent']);
    await lock.release();
    expect((await listLocks(b)).map((l) => l.record?.id).sort()).to.deep.equal(['dead', 'silent']);
  });

  it('a lock removed under its holder (ferry unlock --force) stops the holder before it commits', async function () {
    const b = new MemoryBackend();
    const lock = await RepositoryLock.acquire(b, { operation: 'backup', vms: ['web01'] });
    await lock.assertHeld();
    await b.delete(lockKey(lock.id));
    const err = await lock.assertHeld().catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('REPO_LOCK_LOST');
    await lock.release();
  });

  it('refreshes its heartbeat while held and leaves nothing behind on release', async function () {
    const b = new MemoryBackend();
    const lock = await RepositoryLock.acquire(b, { operation: 'gc' }, { heartbeatMs: 20 });
    const first = lock.record.startedAt;
    await new Promise((r) => setTimeout(r, 120));
    const stored = JSON.parse(b.objects.get(lockKey(lock.id))!.toString()) as LockRecord;
    expect(Date.parse(stored.heartbeatAt)).to.be.greaterThan(Date.parse(first));
    await lock.release();
    expect(b.objects.size).to.equal(0);
  });
});
