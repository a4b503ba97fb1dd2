import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, unlinkSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { BlockMap, FerryError, JobRuntime, Repository, type RestorePoint } from '@ferry/core';
import { makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';

const MiB = 1024 * 1024;
const DAY = 86_400_000;

/** Whether `lsattr` shows the immutable attribute on a file. */
function hasImmutableAttr(file: string): boolean {
  const r = spawnSync('lsattr', [file], { encoding: 'utf8' });
  return r.status === 0 && /^\S*i\S*\s/.test(r.stdout);
}

describe('immutability end to end (filesystem repository)', function () {
  const t = tempDir('ferry-immut-');
  const repoDir = path.join(t.dir, 'repo');
  let job: string;
  const ids: string[] = [];
  let old: RestorePoint;

  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(path.join(t.dir, 'images', 'web01.raw'), { sizeBytes: 8 * MiB, seed: 31 });
    const yaml = basicJob({ disks: ['web01.raw'], extra: 'retention: { restorePoints: 1 }' }).replace(
      '  path: ./repo\n',
      '  path: ./repo\n  immutability: { days: 30 }\n',
    );
    job = writeJob(t.dir, yaml);
  });
  after(() => {
    // The immutable attribute stops even root's rm: lift it before removing the test's folder.
    spawnSync('chattr', ['-R', '-i', t.dir], { stdio: 'ignore' });
    t.cleanup();
  });

  it('retention after a session keeps a young point it would otherwise delete', async function () {
    for (let i = 0; i < 2; i++) {
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      const rep = json<{
        disks: { restorePoint: string }[];
        retention?: { removed: unknown[] };
        protection: { encrypted: boolean; immutabilityDays?: number; storage?: { readOnly: boolean; immutable: boolean; note?: string } };
      }>(r);
      ids.push(rep.disks[0].restorePoint);
      expect(rep.retention?.removed ?? []).to.deep.equal([]);
      // The report says what protects the points, and what the storage could not do.
      expect(rep.protection).to.include({ encrypted: false, immutabilityDays: 30 });
      expect(rep.protection.storage?.readOnly).to.equal(true);
      if (!rep.protection.storage?.immutable) expect(rep.protection.storage?.note).to.be.a('string');
    }
    const list = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    expect(list.restorePoints.map((p) => p.id)).to.deep.equal(ids);
  });

  it('prune --dry-run says "immutable until", prune deletes nothing young', async function () {
    const dry = await runFerry(['prune', job, '--dry-run']);
    expect(dry.code, dry.stderr).to.equal(0);
    expect(dry.stdout).to.match(new RegExp(`keep web01 ${ids[0]} .*immutable until \\d{4}-\\d\\d-\\d\\dT`));
    const real = json<{ removed: unknown[]; kept: { restorePoint: string; immutableUntil?: string }[] }>(await runFerry(['prune', job, '--json']));
    expect(real.removed).to.deep.equal([]);
    expect(real.kept.find((k) => k.restorePoint === ids[0])?.immutableUntil).to.be.a('string');
  });

  it('a direct delete is refused by the code (REPO_IMMUTABLE) and, where the platform allows, by the storage', async function () {
    const rt = await JobRuntime.open(job, { sourceMayBeGone: true });
    try {
      const repo = await rt.repository({ create: false });
      const p = await repo.getPoint('web01', ids[0]);
      const err = await repo.deletePoint(p).catch((e: unknown) => e);
      expect(err).to.be.instanceOf(FerryError);
      expect((err as FerryError).code).to.equal('REPO_IMMUTABLE');
      expect((err as FerryError).message).to.match(/immutable until/);
    } finally {
      await rt.close();
    }
    const manifest = path.join(repoDir, 'points', 'web01', `${ids[0]}.json`);
    if (hasImmutableAttr(manifest)) {
      expect(() => unlinkSync(manifest)).to.throw(/EPERM/);
      expect(existsSync(manifest)).to.equal(true);
    } else {
      // Not every filesystem or user can set the attribute; the code-level rule above still holds.
      console.log(`      (the immutable attribute is not available on ${repoDir}: storage-level refusal not checked)`);
    }
  });

  it('a point past its period is pruned, and gc lifts the protection of the packs only it needed', async function () {
    const rt = await JobRuntime.open(job, { sourceMayBeGone: true });
    try {
      const repo = await rt.repository({ create: false });
      const codec = await rt.codec();
      const created = new Date(Date.now() - 40 * DAY);
      const id = Repository.newPointId(created);
      const map = new BlockMap(4 * 256 * 1024, 256 * 1024);
      await repo.blocks.load();
      const rng = new Prng(77);
      for (let i = 0; i < 4; i++) {
        const { hash, encoded } = await codec.encode(rng.fill(Buffer.alloc(256 * 1024)), 'none', 0);
        map.set(i, hash);
        if (repo.blocks.reserve(hash)) await repo.blocks.add(hash, encoded);
      }
      const disk = { name: 'web01.raw', sizeBytes: map.diskSize, blockSize: map.blockSize, map: '', mapSha256: '', blocks: 4, zeroBlocks: 0, transport: 'test', mode: 'full' as const };
      old = await repo.commitPoint({ id, job: 'test-job', vm: 'web01', session: id, createdAt: created.toISOString(), disks: [disk] }, [map]);
    } finally {
      await rt.close();
    }
    const oldManifest = path.join(repoDir, 'points', 'web01', `${old.id}.json`);
    const protectedByStorage = hasImmutableAttr(oldManifest);
    const pr = json<{ removed: { restorePoint: string }[] }>(await runFerry(['prune', job, '--json']));
    expect(pr.removed.map((x) => x.restorePoint)).to.deep.equal([old.id]);
    expect(existsSync(oldManifest)).to.equal(false);
    const gc = await runFerry(['gc', job, '--json']);
    expect(gc.code, gc.stderr + gc.stdout).to.equal(0);
    expect(json<{ deletedPacks: number }>(gc).deletedPacks).to.be.at.least(1);
    const v = await runFerry(['verify', job, '--json']);
    expect(json<{ status: string }>(v).status).to.equal('ok');
    const left = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    expect(left.restorePoints.map((p) => p.id)).to.deep.equal(ids);
    if (!protectedByStorage) console.log('      (the immutable attribute was not available: only mode bits were lifted)');
  });
});
