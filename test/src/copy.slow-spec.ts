import { cpSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { runAndKill } from './support/run-and-kill.js';
import { startS3Server, type S3Server } from './support/s3-server.js';

const MiB = 1024 * 1024;

interface CopyJson {
  points: { vm: string; restorePoint: string; status: string; blocksTransferred: number }[];
  blocks: { total: number; transferred: number; present: number; zero: number };
}

describe('ferry copy: filesystem -> S3 (encrypted) -> filesystem', function () {
  const t = tempDir('ferry-copy-');
  const image = path.join(t.dir, 'images', 'web01.raw');
  let s3: S3Server;
  let env: NodeJS.ProcessEnv;
  const copies: { id: string; file: string }[] = [];
  const job = (name: string, repository: string): string =>
    writeJob(t.dir, ['job: copy-test', 'source: { host: file, datastore: ./images, vms: [ { name: web01, disks: [web01.raw] } ] }', repository, 'storage: { blockSize: 256KiB }', ''].join('\n'), name);
  let s3Repo: string;

  before(async function () {
    s3 = await startS3Server();
    env = { ...s3.env, FERRY_CACHE_DIR: path.join(t.dir, 'cache'), COPY_PASS: 'copy secret' };
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: 16 * MiB, seed: 77, holes: 0.25 });
    s3Repo = `repository: { type: s3, bucket: ${s3.bucket}, prefix: copy/, endpoint: '${s3.endpoint}', region: us-east-1, forcePathStyle: true, credentials: env, encryption: { passphraseEnv: COPY_PASS } }`;
  });
  after(async () => {
    await s3?.stop();
    t.cleanup();
  });

  it('copies every point to a new S3 repository; a second copy sends nothing', async function () {
    const local = job('local.yaml', 'repository: { type: filesystem, path: ./local }');
    for (let run = 0; run < 2; run++) {
      if (run === 1) await changeVmImage(image, { count: 4, length: 8192, seed: 6 });
      const r = await runFerry(['backup', local, '--json'], { env });
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      const file = path.join(t.dir, `v${run}`);
      cpSync(image, file);
      copies.push({ id: json<{ disks: { restorePoint: string }[] }>(r).disks[0].restorePoint, file });
    }
    const target = writeJob(t.dir, s3Repo + '\n', 's3.yaml');
    // The copy creates the S3 repository as format 1 (the local one is format 2): a copy across
    // formats, and a repository for the upgrade case below.
    const first = await runFerry(['copy', local, '--to', target, '--point', 'all', '--json'], { env: { ...env, FERRY_REPOSITORY_FORMAT: '1' } });
    expect(first.code, first.stderr + first.stdout).to.equal(0);
    const a = json<CopyJson>(first);
    expect(a.points.map((p) => [p.restorePoint, p.status])).to.deep.equal(copies.map((c) => [c.id, 'copied']));
    expect(a.blocks.transferred).to.be.at.least(20);
    expect(a.blocks.transferred + a.blocks.present).to.equal(a.blocks.total);
    // The second point shares most blocks with the first: few are sent for it.
    expect(a.points[1].blocksTransferred).to.be.at.most(4);
    const again = json<CopyJson>(await runFerry(['copy', local, '--to', target, '--point', 'all', '--json'], { env }));
    expect(again.points.every((p) => p.status === 'present')).to.equal(true);
    expect(again.blocks.transferred).to.equal(0);
    const v = await runFerry(['verify', '--repository', target, '--json'], { env });
    expect(v.code, v.stderr + v.stdout).to.equal(0);
  });

  it('copyTo: copies each new point after the session; a failing target fails the session', async function () {
    writeJob(t.dir, s3Repo.replace('prefix: copy/', 'prefix: copy-to/') + '\n', 'copy-to.yaml');
    const withCopy = job('with-copy.yaml', 'repository: { type: filesystem, path: ./local }\ncopyTo: [./copy-to.yaml]');
    const r = await runFerry(['backup', withCopy, '--json'], { env });
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const rep = json<{ disks: { restorePoint: string }[]; copies: { to: string; points: number; blocksTransferred: number }[] }>(r);
    expect(rep.copies).to.have.length(1);
    expect(rep.copies[0]).to.include({ points: 1 });
    expect(rep.copies[0].to).to.include('copy-to/');
    const copyJob = job('copy-to-job.yaml', s3Repo.replace('prefix: copy/', 'prefix: copy-to/'));
    const listed = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', copyJob, '--json'], { env }));
    expect(listed.restorePoints.map((p) => p.id)).to.deep.equal([rep.disks[0].restorePoint]);
    // Without the passphrase the copy cannot open its encrypted target: reported, exit 1.
    const failed = await runFerry(['backup', withCopy, '--json'], { env: { ...env, COPY_PASS: 'wrong' } });
    expect(failed.code).to.equal(1);
    expect(json<{ copies: { error?: { code: string } }[] }>(failed).copies[0].error?.code).to.equal('REPO_WRONG_PASSPHRASE');
  });

  it('between plain repositories, stores the same block ids and reads only what the target lacks', async function () {
    const local = path.join(t.dir, 'local.yaml');
    const plain = writeJob(t.dir, 'repository: { type: filesystem, path: ./plain }\n', 'plain.yaml');
    const first = await runFerry(['copy', local, '--to', plain, '--point', copies[0].id, '--json'], { env });
    expect(first.code, first.stderr + first.stdout).to.equal(0);
    expect(first.stderr + first.stdout).not.to.include('REPO_');
    const a = json<CopyJson>(first);
    expect(a.points.map((p) => p.status)).to.deep.equal(['copied']);
    // The newest point differs from the first in a few blocks: only those are sent.
    // An existing repository folder is a target too.
    const b = json<CopyJson>(await runFerry(['copy', local, '--to', path.join(t.dir, 'plain'), '--json'], { env }));
    expect(b.points).to.have.length(1);
    expect(b.blocks.transferred).to.be.at.least(1).and.at.most(8);
    expect(b.blocks.present).to.be.at.least(a.blocks.transferred - 8);
    const plainJob = job('plain-job.yaml', 'repository: { type: filesystem, path: ./plain }');
    const out = path.join(t.dir, 'restored-plain');
    const r = await runFerry(['restore', plainJob, '--vm', 'web01', '--disk', 'web01.raw', '--point', copies[0].id, '--to', out], { env });
    expect(r.code, r.stderr).to.equal(0);
    expect(await firstDifference(copies[0].file, out)).to.equal(-1);
  });

  it('copies back from S3 to a filesystem repository, resuming after a kill; restores are byte-identical', async function () {
    const fromS3 = job('from-s3.yaml', s3Repo);
    const back = writeJob(t.dir, 'type: filesystem\npath: ./back\n', 'back.yaml');
    mkdirSync(path.join(t.dir, 'back'));
    // runAndKill runs the CLI with this process's environment.
    Object.assign(process.env, env);
    const killed = await runAndKill(['copy', fromS3, '--to', back, '--point', 'all', '--json'], path.join(t.dir, 'back', 'locks'), { at: 'lock', afterMs: 400 });
    expect(killed.outcome === 'killed' || killed.code === 0, killed.stderr).to.equal(true);
    const r = await runFerry(['copy', fromS3, '--to', back, '--point', 'all', '--json'], { env });
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const rep = json<CopyJson>(r);
    expect(rep.points.map((p) => p.restorePoint)).to.deep.equal(copies.map((c) => c.id));
    expect(rep.blocks.transferred + rep.blocks.present).to.equal(rep.blocks.total);
    const backJob = job('back-job.yaml', 'repository: { type: filesystem, path: ./back }');
    for (const c of copies) {
      const out = path.join(t.dir, `restored-${c.id}`);
      const res = await runFerry(['restore', backJob, '--vm', 'web01', '--disk', 'web01.raw', '--point', c.id, '--to', out], { env });
      expect(res.code, res.stderr).to.equal(0);
      expect(await firstDifference(c.file, out)).to.equal(-1);
    }
    const v = await runFerry(['verify', backJob, '--json'], { env });
    expect(v.code, v.stderr + v.stdout).to.equal(0);
  });

  it('repository upgrade reaches the S3 repository through its repository file', async function () {
    const target = path.join(t.dir, 's3.yaml');
    const up = await runFerry(['repository', 'upgrade', '--repository', target, '--json'], { env });
    expect(up.code, up.stderr + up.stdout).to.equal(0);
    expect(json<{ fromVersion: number }>(up).fromVersion).to.equal(1);
    const v = await runFerry(['verify', '--repository', target, '--json'], { env });
    expect(v.code, v.stderr + v.stdout).to.equal(0);
    const out = path.join(t.dir, 'restored-upgraded');
    const r = await runFerry(['restore', job('s3-job.yaml', s3Repo), '--vm', 'web01', '--disk', 'web01.raw', '--point', copies[1].id, '--to', out], { env });
    expect(r.code, r.stderr).to.equal(0);
    expect(await firstDifference(copies[1].file, out)).to.equal(-1);
  });
});
