import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { Repository, RepositoryLock } from '@ferry/core';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { S3Backend, type S3RepositoryConfig } from '@ferry/repo-s3';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startS3Server, type S3Server } from './support/s3-server.js';

const MiB = 1024 * 1024;

/** A job's `repository:` section for s3rver, in YAML flow style. */
function repoYaml(s3: S3Server, prefix: string, extra = ''): string {
  return `repository: { type: s3, bucket: ${s3.bucket}, prefix: ${prefix}, endpoint: '${s3.endpoint}', region: us-east-1, forcePathStyle: true, credentials: env, requests: 8, objectLock: auto${extra} }`;
}

describe('S3 repository end to end through the CLI (s3rver)', function () {
  const t = tempDir('ferry-s3cli-');
  const image = path.join(t.dir, 'images', 'web01.raw');
  let s3: S3Server;
  let env: NodeJS.ProcessEnv;
  let job: string;
  let repoFile: string;
  const points: { id: string; copy: string }[] = [];
  const requests: { PUT: number; bytesUp: number }[] = [];

  before(async function () {
    s3 = await startS3Server();
    // Format 2, the format meant for object storage (no full listing on the hot path); the copy spec
    // covers format 1 on S3.
    env = { ...s3.env, FERRY_CACHE_DIR: path.join(t.dir, 'cache'), S3_TEST_PASS: 'correct horse', FERRY_REPOSITORY_FORMAT: '2' };
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: 12 * MiB, seed: 15, holes: 0.3 });
    const repo = repoYaml(s3, 'site-a/', ', encryption: { passphraseEnv: S3_TEST_PASS }');
    job = writeJob(
      t.dir,
      ['job: s3-job', 'source:', '  host: file', '  datastore: ./images', '  vms:', '    - name: web01', '      disks: [web01.raw]', repo, 'storage: { blockSize: 256KiB }', 'retention: { restorePoints: 2 }', ''].join('\n'),
    );
    // A repository file holding only the `repository:` mapping, for the maintenance verbs.
    repoFile = writeJob(t.dir, repo + '\n', 'repo.yaml');
  });
  after(async () => {
    await s3?.stop();
    t.cleanup();
  });

  it('backs up full and incremental, restores both byte-identical', async function () {
    for (let run = 0; run < 2; run++) {
      if (run === 1) await changeVmImage(image, { count: 5, length: 8192, seed: 3 });
      const r = await runFerry(['backup', job, '--json'], { env });
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      expect(r.stderr + r.stdout).not.to.include('S3RVER'); // the secret key never shows
      const report = json<{
        disks: { restorePoint: string; mode: string; blocks: { new: number }; bytesWritten: number }[];
        protection: { encrypted?: boolean };
        requests: { GET: number; PUT: number; LIST: number; DELETE: number; HEAD: number; bytesUp: number; notes?: string[] };
      }>(r);
      // The report counts S3 requests by kind; an incremental run sends far fewer PUTs and bytes.
      expect(report.requests.PUT).to.be.at.least(3);
      expect(report.requests.bytesUp).to.be.at.least(report.disks[0].bytesWritten);
      expect(report.requests.notes?.join(' ')).to.match(/no Object Lock/);
      requests.push(report.requests);
      if (run === 0) expect(report.disks[0].mode).to.equal('full');
      expect(report.protection.encrypted).to.equal(true);
      if (run === 1) expect(report.disks[0].blocks.new).to.be.at.least(1).and.at.most(5);
      const copy = path.join(t.dir, `web01.v${run}`);
      cpSync(image, copy);
      points.push({ id: report.disks[0].restorePoint, copy });
    }
    expect(requests[1].bytesUp).to.be.below(requests[0].bytesUp / 4);
    for (const p of points) {
      const out = path.join(t.dir, `restored-${p.id}`);
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--point', p.id, '--to', out], { env });
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(p.copy, out)).to.equal(-1);
    }
  });

  it('maintenance verbs reach the bucket through a repository file', async function () {
    const v = await runFerry(['verify', '--repository', repoFile, '--json'], { env });
    expect(v.code, v.stderr + v.stdout).to.equal(0);
    const u = await runFerry(['unlock', '--repository', repoFile, '--json'], { env });
    expect(u.code, u.stderr + u.stdout).to.equal(0);
    const g = await runFerry(['gc', '--repository', repoFile, '--dry-run', '--json'], { env });
    expect(g.code, g.stderr + g.stdout).to.equal(0);
    // A bare mapping works too; a wrong key is named.
    const bare = writeJob(t.dir, repoYaml(s3, 'site-a/').replace(/^repository: \{ (.*) \}$/, '$1').split(', ').join('\n').replace(/'/g, '') + '\nencryption: { passphraseEnv: S3_TEST_PASS }\n', 'bare.yaml');
    const vb = await runFerry(['verify', '--repository', bare, '--sample', '10%', '--json'], { env });
    expect(vb.code, vb.stderr + vb.stdout).to.equal(0);
    writeFileSync(path.join(t.dir, 'typo.yaml'), repoYaml(s3, 'site-a/', ', bukket: x') + '\n');
    const typo = await runFerry(['verify', '--repository', path.join(t.dir, 'typo.yaml'), '--json'], { env });
    expect(typo.code).to.equal(2);
    expect(json<{ error: { message: string } }>(typo).error.message).to.include('bukket');
  });

  it('a live lock in the bucket stops a backup of its VM with REPO_LOCKED; unlock lists it', async function () {
    const backend = new S3Backend(s3.repository('site-a/') as unknown as S3RepositoryConfig, { env: s3.env });
    // Through the repository's storage: format 2 keeps locks under its mutable prefix.
    const repo = await Repository.open(backend, { create: false, keyless: true });
    const lock = await RepositoryLock.acquire(repo.backend, { operation: 'backup', vms: ['web01'], job: 'other', command: 'test holder' });
    try {
      const r = await runFerry(['backup', job, '--json'], { env });
      expect(r.code).to.not.equal(0);
      expect(r.stdout + r.stderr).to.include('REPO_LOCKED');
      const u = json<Record<string, unknown>>(await runFerry(['unlock', '--repository', repoFile, '--json'], { env }));
      expect(JSON.stringify(u)).to.include('test holder');
    } finally {
      await lock.release();
      await backend.close();
    }
  });

  it('an immutable format 2 repository on a bucket without Object Lock says so and still refuses to forget', async function () {
    const imm = writeJob(
      t.dir,
      ['job: s3-imm', 'source:', '  host: file', '  datastore: ./images', '  vms:', '    - name: web01', '      disks: [web01.raw]', repoYaml(s3, 'site-imm/', ', immutability: { days: 1 }'), 'storage: { blockSize: 256KiB }', ''].join('\n'),
      'imm.yaml',
    );
    const r = await runFerry(['backup', imm, '--json'], { env });
    expect(r.code, r.stderr + r.stdout).to.equal(0);
    const rep = json<{ disks: { restorePoint: string }[]; protection: { immutabilityDays?: number; storage?: { immutable: boolean; note?: string } } }>(r);
    expect(rep.protection.immutabilityDays).to.equal(1);
    expect(rep.protection.storage?.immutable).to.equal(false);
    expect(rep.protection.storage?.note).to.match(/Object Lock/);
    const f = await runFerry(['forget', imm, '--vm', 'web01', '--point', rep.disks[0].restorePoint, '--json'], { env });
    expect(f.code).to.not.equal(0);
    expect(f.stdout + f.stderr).to.include('REPO_IMMUTABLE');
  });

  it('prune, forget and gc remove points and their data from the bucket; verify stays clean', async function () {
    await changeVmImage(image, { count: 5, length: 8192, seed: 4 });
    const b = await runFerry(['backup', job, '--json'], { env });
    expect(b.code, b.stderr + b.stdout).to.equal(0);
    // Retention keeps 2: the session removed the first point.
    const listed = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json'], { env }));
    expect(listed.restorePoints.map((p) => p.id)).not.to.include(points[0].id);
    expect(listed.restorePoints).to.have.length(2);
    const f = await runFerry(['forget', '--repository', repoFile, '--vm', 'web01', '--point', listed.restorePoints[0].id, '--json'], { env });
    expect(f.code, f.stderr + f.stdout).to.equal(0);
    const pr = await runFerry(['prune', job, '--json'], { env });
    expect(pr.code, pr.stderr + pr.stdout).to.equal(0);
    const g = await runFerry(['gc', job, '--grace', '0s', '--rewrite-threshold', '1%', '--json'], { env });
    expect(g.code, g.stderr + g.stdout).to.equal(0);
    const v = await runFerry(['verify', job, '--json'], { env });
    expect(v.code, v.stderr + v.stdout).to.equal(0);
    const out = path.join(t.dir, 'restored-latest');
    const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--to', out], { env });
    expect(r.code, r.stderr).to.equal(0);
    expect(await firstDifference(image, out)).to.equal(-1);
  });
});
