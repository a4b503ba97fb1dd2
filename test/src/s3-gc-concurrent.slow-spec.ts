import { copyFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { gatedJob, startGatedBackup } from './support/gated-backup.js';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startS3Server, type S3Server } from './support/s3-server.js';

/**
 * gc-concurrent.spec's dangerous case on an S3 repository (s3rver): a backup deduplicates against
 * blocks no restore point needs any more while gc runs; gc must not delete them under it.
 */
describe('S3: gc while a backup deduplicates against blocks nothing else needs', function () {
  const t = tempDir('ferry-s3gc-');
  const images = path.join(t.dir, 'images');
  let s3: S3Server;
  let oldJob: string;
  let newJob: string;
  const saved: Record<string, string | undefined> = {};

  before(async function () {
    s3 = await startS3Server();
    // startGatedBackup runs the CLI with this process's environment.
    const env = { ...s3.env, FERRY_CACHE_DIR: path.join(t.dir, 'cache') };
    for (const [k, v] of Object.entries(env)) {
      saved[k] = process.env[k];
      process.env[k] = v;
    }
    const repo = `repository: { type: s3, bucket: ${s3.bucket}, prefix: gc/, endpoint: '${s3.endpoint}', region: us-east-1, forcePathStyle: true, credentials: env }`;
    mkdirSync(images);
    await makeVmImage(path.join(images, 'old.raw'), { sizeBytes: 16 * 1024 * 1024, seed: 71, holes: 0.05 });
    copyFileSync(path.join(images, 'old.raw'), path.join(images, 'new.raw'));
    oldJob = writeJob(t.dir, gatedJob({ job: 'old', vm: 'old01', disk: 'old.raw', extra: 'retention: { restorePoints: 1 }' }).replace('transport: gated-read', 'transport: auto').replace(/^repository: .*$/m, repo), 'old.yaml');
    newJob = writeJob(t.dir, gatedJob({ job: 'new', vm: 'new01', disk: 'new.raw' }).replace(/^repository: .*$/m, repo), 'new.yaml');
    expect((await runFerry(['backup', oldJob])).code).to.equal(0);
    await makeVmImage(path.join(images, 'old.raw'), { sizeBytes: 16 * 1024 * 1024, seed: 72, holes: 0.05 });
    const r = await runFerry(['backup', oldJob, '--json']);
    expect(json<{ retention: { removed: unknown[] } }>(r).retention.removed).to.have.length(1);
  });
  after(async () => {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
    await s3?.stop();
    t.cleanup();
  });

  it('gc deletes nothing the running backup reuses; the backup commits, restores and verifies', async function () {
    const backup = startGatedBackup(newJob, path.join(images, 'new.raw'));
    let gc: { condemnedPacks: number; deletedPacks: number };
    try {
      await backup.waiting;
      const r = await runFerry(['gc', oldJob, '--grace', '0s', '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      gc = json(r);
    } finally {
      backup.open();
    }
    const done = await backup.done;
    expect(done.code, done.stderr).to.equal(0);
    const report = json<{ disks: { blocks: { new: number; deduped: number } }[] }>(done).disks[0];
    expect(report.blocks.deduped).to.be.greaterThan(report.blocks.new);
    expect(gc.condemnedPacks).to.be.greaterThan(0);
    expect(gc.deletedPacks).to.equal(0);
    const again = await runFerry(['gc', oldJob, '--grace', '0s', '--json']);
    expect(again.code, again.stderr).to.equal(0);
    const out = path.join(t.dir, 'restored.raw');
    const res = await runFerry(['restore', newJob, '--vm', 'new01', '--disk', 'new.raw', '--to', out]);
    expect(res.code, res.stderr).to.equal(0);
    expect(await firstDifference(path.join(images, 'new.raw'), out)).to.equal(-1);
    const v = await runFerry(['verify', newJob, '--json']);
    expect(v.code, v.stdout).to.equal(0);
  });
});
