import { cpSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';

const MiB = 1024 * 1024;

interface ListJson {
  restorePoints: { id: string; vm: string; status: 'ok' | 'damaged'; code?: string; reason?: string; manifest?: string }[];
}

function errorCode(r: CliResult): string | undefined {
  return (JSON.parse(r.stdout) as { error?: { code: string } }).error?.code;
}

function pointOf(r: CliResult): string {
  expect(r.code, r.stderr + r.stdout).to.equal(0);
  return json<{ disks: { restorePoint: string }[] }>(r).disks[0].restorePoint;
}

describe('write-once repository: race-free creation, damaged manifests, forget', function () {
  const t = tempDir('ferry-once-');
  const images = path.join(t.dir, 'images');

  before(async function () {
    mkdirSync(images);
    await makeVmImage(path.join(images, 'a.raw'), { sizeBytes: 8 * MiB, seed: 71, holes: 0.2 });
    await makeVmImage(path.join(images, 'b.raw'), { sizeBytes: 8 * MiB, seed: 72, holes: 0.2 });
    writeFileSync(path.join(t.dir, 'pass'), 'correct horse\n');
  });
  after(() => {
    // The immutable attribute stops even root's rm: lift it before removing the test's folder.
    spawnSync('chattr', ['-R', '-i', t.dir], { stdio: 'ignore' });
    t.cleanup();
  });

  it('two first backups at once into a new encrypted repository: one creates it, both points restore', async function () {
    // Two fresh repositories: the race (both see no config while deriving their keys) is likely in each.
    for (let round = 0; round < 2; round++) {
      const repo = `./enc-${round}`;
      const enc = (vm: string, disk: string): string =>
        basicJob({ vm, disks: [disk], repo }).replace(`  path: ${repo}\n`, `  path: ${repo}\n  encryption: { passphraseFile: ./pass }\n`);
      const jobA = writeJob(t.dir, enc('vma', 'a.raw'), `race-a-${round}.yaml`);
      const jobB = writeJob(t.dir, enc('vmb', 'b.raw'), `race-b-${round}.yaml`);
      const [ra, rb] = await Promise.all([runFerry(['backup', jobA, '--json']), runFerry(['backup', jobB, '--json'])]);
      const pa = pointOf(ra);
      const pb = pointOf(rb);
      const keys = readdirSync(path.join(t.dir, repo, 'keys'));
      expect(keys, 'the losing creator removes its key object').to.have.length(1);
      const listed = json<ListJson>(await runFerry(['list', jobA, '--json']));
      expect(listed.restorePoints.map((p) => [p.vm, p.status]).sort()).to.deep.equal([
        ['vma', 'ok'],
        ['vmb', 'ok'],
      ]);
      for (const [job, vm, disk, id] of [
        [jobA, 'vma', 'a.raw', pa],
        [jobB, 'vmb', 'b.raw', pb],
      ]) {
        const out = path.join(t.dir, `race-${round}-${vm}.out`);
        const r = await runFerry(['restore', job, '--vm', vm, '--disk', disk, '--point', id, '--to', out]);
        expect(r.code, r.stderr).to.equal(0);
        expect(await firstDifference(path.join(images, disk), out)).to.equal(-1);
      }
      if (round > 0) continue;
      const v = await runFerry(['verify', jobA, '--json']);
      expect(v.code, v.stdout).to.equal(0);
      const gc = await runFerry(['gc', jobB, '--json']);
      expect(gc.code, gc.stderr + gc.stdout).to.equal(0);
    }
  });

  describe('a damaged manifest', function () {
    const job = (): string => path.join(t.dir, 'dmg.yaml');
    const repo = path.join(t.dir, 'dmg-repo');
    const image = path.join(images, 'a.raw');
    const ids: string[] = [];
    const copies: string[] = [];

    before(async function () {
      writeJob(t.dir, basicJob({ disks: ['a.raw'], repo: './dmg-repo' }), 'dmg.yaml');
      for (let i = 0; i < 3; i++) {
        if (i) await changeVmImage(image, { count: 4, length: 64 * 1024, seed: 300 + i });
        ids.push(pointOf(await runFerry(['backup', job(), '--json'])));
        const copy = path.join(t.dir, `dmg-v${i}`);
        cpSync(image, copy);
        copies.push(copy);
      }
      // Point 0: not JSON any more. Point 1 is copied over point 2's name (a manifest under another key).
      const manifest = (id: string): string => path.join(repo, 'points', 'web01', `${id}.json`);
      writeFileSync(manifest(ids[0]), '{ "format": "ferry-restore-point", trunc');
      writeFileSync(path.join(repo, 'points', 'web01', '20200101T000000000Z-abcdef.json'), readFileSync(manifest(ids[1])));
    });

    it('`list --json` reports it as damaged with the reason and still lists the other points', async function () {
      const r = await runFerry(['list', job(), '--json']);
      expect(r.code, r.stderr).to.equal(0);
      const rows = json<ListJson>(r).restorePoints;
      expect(rows.map((p) => [p.id, p.status])).to.deep.equal([
        ['20200101T000000000Z-abcdef', 'damaged'],
        [ids[0], 'damaged'],
        [ids[1], 'ok'],
        [ids[2], 'ok'],
      ]);
      expect(rows[0].reason).to.match(/belongs under points\/web01\//);
      expect(rows[1].code).to.equal('REPO_CORRUPT_OBJECT');
      expect(rows[1].reason).to.match(/JSON/);
    });

    it('restoring it names the damage; the other points restore', async function () {
      const bad = await runFerry(['restore', job(), '--vm', 'web01', '--disk', 'a.raw', '--point', ids[0], '--to', path.join(t.dir, 'x'), '--json']);
      expect(bad.code).to.equal(1);
      expect(errorCode(bad)).to.equal('REPO_CORRUPT_OBJECT');
      const out = path.join(t.dir, 'dmg-restored');
      const r = await runFerry(['restore', job(), '--vm', 'web01', '--disk', 'a.raw', '--point', ids[1], '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(copies[1], out)).to.equal(-1);
    });

    it('`verify` names it, the next backup succeeds, and gc keeps what its block maps need', async function () {
      const v = await runFerry(['verify', job(), '--json']);
      expect(v.code).to.equal(1);
      const damaged = json<{ damagedObjects: { object: string; kind: string }[] }>(v).damagedObjects;
      expect(damaged.map((d) => d.object)).to.include(`points/web01/${ids[0]}.json`);
      await changeVmImage(image, { count: 4, length: 64 * 1024, seed: 399 });
      const next = pointOf(await runFerry(['backup', job(), '--json']));
      ids.push(next);
      cpSync(image, path.join(t.dir, 'dmg-v3'));
      copies.push(path.join(t.dir, 'dmg-v3'));
      const gc = await runFerry(['gc', job(), '--grace', '0s', '--json']);
      expect(gc.code, gc.stderr + gc.stdout).to.equal(0);
      expect(readdirSync(path.join(repo, 'points', 'web01', ids[0])), "the damaged point's map stays").to.deep.equal(['disk-0.map']);
    });

    it('`forget` removes a damaged point and a good one; afterwards the repository verifies', async function () {
      for (const id of ['20200101T000000000Z-abcdef', ids[0], ids[1]]) {
        const r = await runFerry(['forget', job(), '--vm', 'web01', '--point', id, '--json']);
        expect(r.code, r.stderr + r.stdout).to.equal(0);
        const rep = json<{ restorePoint: string; status: string; removed: string[] }>(r);
        expect(rep.restorePoint).to.equal(id);
        expect(rep.removed[0]).to.equal(`points/web01/${id}.json`);
        expect(rep.status).to.equal(id === ids[1] ? 'ok' : 'damaged');
      }
      const listed = json<ListJson>(await runFerry(['list', job(), '--json'])).restorePoints;
      expect(listed.map((p) => p.id)).to.deep.equal([ids[2], ids[3]]);
      const v = await runFerry(['verify', job(), '--json']);
      expect(v.code, v.stdout).to.equal(0);
      const gone = await runFerry(['forget', job(), '--vm', 'web01', '--point', ids[0], '--json']);
      expect(gone.code).to.equal(2);
      expect(errorCode(gone)).to.equal('REPO_POINT_NOT_FOUND');
      const out = path.join(t.dir, 'dmg-after-forget');
      const r = await runFerry(['restore', job(), '--vm', 'web01', '--disk', 'a.raw', '--point', ids[2], '--to', out]);
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(copies[2], out)).to.equal(-1);
    });
  });

  it('a manifest dated in the future does not stay `latest`: points are ordered by id', async function () {
    const job = writeJob(t.dir, basicJob({ vm: 'fut', disks: ['b.raw'], repo: './fut-repo' }), 'fut.yaml');
    const first = pointOf(await runFerry(['backup', job, '--json']));
    const file = path.join(t.dir, 'fut-repo', 'points', 'fut', `${first}.json`);
    const m = JSON.parse(readFileSync(file, 'utf8'));
    m.createdAt = '2099-01-01T00:00:00.000Z';
    writeFileSync(file, JSON.stringify(m, null, 2) + '\n');
    await changeVmImage(path.join(images, 'b.raw'), { count: 3, length: 64 * 1024, seed: 501 });
    const second = pointOf(await runFerry(['backup', job, '--json']));
    const listed = json<ListJson>(await runFerry(['list', job, '--json'])).restorePoints;
    expect(listed.map((p) => p.id)).to.deep.equal([first, second]);
    const out = path.join(t.dir, 'fut-latest');
    const r = await runFerry(['restore', job, '--vm', 'fut', '--disk', 'b.raw', '--to', out, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    expect(json<{ restorePoint: string }>(r).restorePoint).to.equal(second);
    expect(await firstDifference(path.join(images, 'b.raw'), out)).to.equal(-1);
  });

  it('`forget` refuses a point inside its immutability period (exit 2, REPO_IMMUTABLE) and deletes nothing', async function () {
    const job = writeJob(
      t.dir,
      basicJob({ vm: 'imm', disks: ['a.raw'], repo: './imm-repo' }).replace('  path: ./imm-repo\n', '  path: ./imm-repo\n  immutability: { days: 3 }\n'),
      'imm.yaml',
    );
    const id = pointOf(await runFerry(['backup', job, '--json']));
    const r = await runFerry(['forget', job, '--vm', 'imm', '--point', id, '--json']);
    expect(r.code).to.equal(2);
    expect(errorCode(r)).to.equal('REPO_IMMUTABLE');
    expect(json<ListJson>(await runFerry(['list', job, '--json'])).restorePoints.map((p) => p.id)).to.deep.equal([id]);
  });

  it('a restore point is never replaced: a second manifest under the same id is REPO_OBJECT_EXISTS', async function () {
    const { Repository } = await import('@ferry/core');
    const { MemoryBackend } = await import('@ferry/core/testing');
    const repo = await Repository.open(new MemoryBackend(), { create: true });
    const { BlockMap } = await import('@ferry/core');
    const map = new BlockMap(4096, 4096);
    const disk = { name: 'd', sizeBytes: 4096, blockSize: 4096, blocks: 1, zeroBlocks: 1, transport: 't', mode: 'full' as const };
    const id = Repository.newPointId();
    const point = { id, job: 'j', vm: 'v', session: id, createdAt: new Date().toISOString(), disks: [disk as never] };
    await repo.commitPoint(point, [map]);
    let code = 'no error';
    await repo.commitPoint({ ...point, disks: [{ ...disk, name: 'other' } as never] }, [map]).catch((e: { code: string }) => (code = e.code));
    expect(code).to.equal('REPO_OBJECT_EXISTS');
    expect((await repo.getPoint('v', id)).disks.map((d) => d.name)).to.deep.equal(['d']);
  });
});
