import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { repoFiles } from './support/repo-inspect.js';

interface PrunedJson {
  vm: string;
  restorePoint: string;
  reasons: string[];
}
interface GcJson {
  dryRun: boolean;
  deletedPacks: number;
  condemnedPacks: number;
  bytesReclaimed: number;
  packs: { total: number; unused: number; rewritten: number };
  pending: { packs: number };
}

describe('retention after each session, `ferry prune` and `ferry gc`', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const image = path.join(images, 'vm.raw');
  const repo = path.join(t.dir, 'repo');
  const job = (keep: number): string => writeJob(t.dir, basicJob({ disks: ['vm.raw'], extra: `retention: { restorePoints: ${keep}, weekly: 0 }` }));
  const points = async (): Promise<string[]> => json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job(3), '--json'])).restorePoints.map((p) => p.id);

  before(async function () {
    mkdirSync(images);
    await makeVmImage(image, { sizeBytes: 24 * 1024 * 1024, seed: 61, holes: 0.1 });
  });
  after(() => t.cleanup());

  it('each successful session removes what the policy does not keep, and says so', async function () {
    const removed: PrunedJson[][] = [];
    for (let i = 0; i < 4; i++) {
      await changeVmImage(image, { count: 20, length: 64 * 1024, seed: 100 + i });
      const r = await runFerry(['backup', job(3), '--json']);
      expect(r.code, r.stderr).to.equal(0);
      removed.push(json<{ retention: { removed: PrunedJson[] } }>(r).retention.removed);
    }
    expect(removed.map((x) => x.length)).to.deep.equal([0, 0, 0, 1]);
    expect(removed[3][0].reasons).to.include('not among the newest 3 restore points');
    expect(await points()).to.have.length(3);
  });

  it('`prune --dry-run` lists what would go and why, and what stays and why, deleting nothing', async function () {
    const before = await points();
    const r = await runFerry(['prune', job(1), '--dry-run', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const rep = json<{ dryRun: boolean; removed: PrunedJson[]; kept: PrunedJson[] }>(r);
    expect(rep.dryRun).to.equal(true);
    expect(rep.kept.map((p) => p.restorePoint)).to.deep.equal([before[2]]);
    expect(rep.kept[0].reasons).to.deep.equal(['one of the newest 1 restore points']);
    expect(rep.removed.map((p) => p.restorePoint).sort()).to.deep.equal(before.slice(0, 2));
    expect(await points()).to.deep.equal(before);
  });

  it('`prune` deletes the manifests and the maps of the points that go', async function () {
    const before = await points();
    const r = await runFerry(['prune', job(1), '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect(json<{ removed: PrunedJson[] }>(r).removed).to.have.length(2);
    expect(await points()).to.deep.equal([before[2]]);
    for (const id of before.slice(0, 2)) {
      expect(existsSync(path.join(repo, 'points', 'web01', `${id}.json`))).to.equal(false);
      expect(existsSync(path.join(repo, 'points', 'web01', id, 'disk-0.map'))).to.equal(false);
    }
  });

  it('`gc --dry-run` estimates, `gc` reclaims the space, and the remaining point still verifies and restores', async function () {
    const packsBefore = repoFiles(repo, 'packs').length;
    const dry = json<GcJson>(await runFerry(['gc', job(1), '--dry-run', '--json']));
    expect(dry.dryRun).to.equal(true);
    expect(dry.bytesReclaimed).to.be.greaterThan(0);
    expect(repoFiles(repo, 'packs').length).to.equal(packsBefore);
    const r = await runFerry(['gc', job(1), '--rewrite-threshold', '5%', '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const gc = json<GcJson>(r);
    expect(gc.deletedPacks).to.equal(gc.condemnedPacks).and.to.be.greaterThan(0);
    expect(gc.pending.packs).to.equal(0);
    expect(gc.bytesReclaimed).to.be.greaterThan(0);
    expect(repoFiles(repo, 'gc')).to.deep.equal([]);
    const v = await runFerry(['verify', job(1), '--json']);
    expect(v.code, v.stdout).to.equal(0);
    const out = path.join(t.dir, 'restored.raw');
    const rr = await runFerry(['restore', job(1), '--vm', 'web01', '--disk', 'vm.raw', '--to', out]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(image, out)).to.equal(-1);
    const again = json<GcJson>(await runFerry(['gc', job(1), '--json']));
    expect(again.condemnedPacks).to.equal(0);
  });

  it('`verify: { afterBackup: true, sample: 50% }` checks the new point after the session', async function () {
    const withCheck = writeJob(t.dir, basicJob({ disks: ['vm.raw'], extra: 'verify: { afterBackup: true, sample: 50% }' }), 'checked.yaml');
    const r = await runFerry(['backup', withCheck, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const v = json<{ verify: { status: string; samplePercent: number; blocksChecked: number; damagedBlocks: number } }>(r).verify;
    expect(v).to.include({ status: 'ok', samplePercent: 50, damagedBlocks: 0 });
    expect(v.blocksChecked).to.be.greaterThan(0);
  });
});
