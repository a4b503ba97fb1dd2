import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { gatedJob, startGatedBackup } from './support/gated-backup.js';
import { repoFiles } from './support/repo-inspect.js';

interface GcJson {
  condemnedPacks: number;
  deletedPacks: number;
  resurrectedPacks: number;
  pending: { packs: number; waitingFor: string[] };
}

/**
 * The dangerous case for garbage collection: a backup that deduplicates against blocks no restore
 * point needs any more (their point was pruned) while gc runs. gc must not delete them under it.
 */
describe('gc while a backup deduplicates against blocks nothing else needs', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  let oldJob: string;
  let newJob: string;
  let condemned = 0;

  async function restoresIdentical(): Promise<void> {
    const out = path.join(t.dir, 'restored.raw');
    const r = await runFerry(['restore', newJob, '--vm', 'new01', '--disk', 'new.raw', '--to', out]);
    expect(r.code, r.stderr).to.equal(0);
    expect(await firstDifference(path.join(images, 'new.raw'), out)).to.equal(-1);
    rmSync(out);
    const v = await runFerry(['verify', newJob, '--json']);
    expect(v.code, v.stdout).to.equal(0);
  }

  before(async function () {
    mkdirSync(images);
    await makeVmImage(path.join(images, 'old.raw'), { sizeBytes: 24 * 1024 * 1024, seed: 71, holes: 0.05 });
    copyFileSync(path.join(images, 'old.raw'), path.join(images, 'new.raw'));
    oldJob = writeJob(t.dir, basicJob({ vm: 'old01', disks: ['old.raw'], extra: 'retention: { restorePoints: 1 }' }), 'old.yaml');
    newJob = writeJob(t.dir, gatedJob({ job: 'new', vm: 'new01', disk: 'new.raw' }), 'new.yaml');
    expect((await runFerry(['backup', oldJob])).code).to.equal(0);
    // the old VM's disk changes completely; retention drops the first point, so its blocks are garbage
    await makeVmImage(path.join(images, 'old.raw'), { sizeBytes: 24 * 1024 * 1024, seed: 72, holes: 0.05 });
    const r = await runFerry(['backup', oldJob, '--json']);
    expect(json<{ retention: { removed: unknown[] } }>(r).retention.removed).to.have.length(1);
  });
  after(() => t.cleanup());

  it('gc condemns those packs but deletes nothing while the backup runs; the backup commits and restores', async function () {
    const backup = startGatedBackup(newJob, path.join(images, 'new.raw'));
    let gc: GcJson;
    try {
      await backup.waiting;
      const r = await runFerry(['gc', oldJob, '--json']);
      expect(r.code, r.stderr).to.equal(0);
      gc = json<GcJson>(r);
    } finally {
      backup.open();
    }
    const done = await backup.done;
    expect(done.code, done.stderr).to.equal(0);
    const report = json<{ disks: { blocks: { new: number; deduped: number } }[] }>(done).disks[0];
    expect(report.blocks.deduped, 'the backup reused the old blocks').to.be.greaterThan(report.blocks.new);
    expect(gc.condemnedPacks).to.be.greaterThan(0);
    expect(gc.deletedPacks).to.equal(0);
    expect(gc.pending.packs).to.equal(gc.condemnedPacks);
    expect(gc.pending.waitingFor.join(' ')).to.include('backup of vm new01');
    condemned = gc.condemnedPacks;
    await restoresIdentical(); // through the condemned packs, which reads may still use
  });

  it('the next gc puts those packs back instead of deleting them; everything still verifies and restores', async function () {
    const r = await runFerry(['gc', oldJob, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const gc = json<GcJson>(r);
    expect(gc.resurrectedPacks).to.equal(condemned);
    expect(gc.deletedPacks).to.equal(0);
    expect(repoFiles(path.join(t.dir, 'repo'), 'gc')).to.deep.equal([]);
    await restoresIdentical();
  });
});
