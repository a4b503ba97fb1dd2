import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { changeVmImage, firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { runAndKill, type KillRun } from './support/run-and-kill.js';

const ROUNDS = 4;
const BUDGET_MS = 80_000;

/**
 * Crash torture of the repository's lifecycle: backups, prunes and garbage collections killed with
 * SIGKILL at random moments. After each kill the health check passes and every committed restore
 * point restores byte-identical to the disk it was taken from.
 */
describe('crash torture: kill -9 during backup, prune and gc (slow)', function () {
  const t = tempDir();
  const image = path.join(t.dir, 'images', 'vm.raw');
  const expected = new Map<string, string>(); // restore point id -> copy of the disk it was taken from
  let job: string;
  let pruneJob: string;
  let attempt = 0;

  const locks = (): string => path.join(t.dir, 'repo', 'locks');

  async function committed(): Promise<string[]> {
    const r = await runFerry(['list', job, '--json']);
    if (r.code !== 0 && json<{ error: { code: string } }>(r).error.code === 'REPO_NOT_A_REPOSITORY') return []; // before the first backup
    expect(r.code, r.stderr).to.equal(0);
    return json<{ restorePoints: { id: string }[] }>(r).restorePoints.map((p) => p.id);
  }

  /** A backup (possibly killed): the point it may have committed belongs to the copy taken first. */
  async function backup(killAfterMs: number): Promise<KillRun> {
    await changeVmImage(image, { count: 24, length: 64 * 1024, seed: 500 + attempt });
    const copy = path.join(t.dir, `disk-${attempt++}`);
    copyFileSync(image, copy);
    const before = new Set(await committed());
    const run = await runAndKill(['backup', job, '--json'], locks(), { at: 'lock', afterMs: killAfterMs });
    for (const id of await committed()) if (!before.has(id)) expected.set(id, copy);
    return run;
  }

  async function checkRepository(label: string): Promise<void> {
    const v = await runFerry(['verify', job, '--json']);
    expect(v.code, `${label}: verify\n${v.stdout}`).to.equal(0);
    for (const id of await committed()) {
      const out = path.join(t.dir, 'restored.raw');
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'vm.raw', '--point', id, '--to', out]);
      expect(r.code, `${label}: restore ${id}\n${r.stderr}`).to.equal(0);
      expect(await firstDifference(expected.get(id)!, out), `${label}: ${id}`).to.equal(-1);
      rmSync(out);
    }
  }

  before(async function () {
    mkdirSync(path.dirname(image));
    await makeVmImage(image, { sizeBytes: 32 * 1024 * 1024, seed: 81, holes: 0.1 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], extra: 'retention: { restorePoints: 3 }' }));
    pruneJob = writeJob(t.dir, basicJob({ disks: ['vm.raw'], extra: 'retention: { restorePoints: 1 }' }), 'prune.yaml');
    for (let i = 0; i < 3; i++) expect((await backup(60_000)).outcome).to.equal('finished');
  });
  after(() => t.cleanup());

  it(`${ROUNDS} rounds: after every kill, verify passes and every committed point restores byte-identical`, async function () {
    const rng = new Prng(Number(process.env.FERRY_TORTURE_SEED ?? 2026)); // another seed: other moments
    const ops = ['backup', 'prune', 'gc', 'backup', 'gc', 'prune'];
    const t0 = Date.now();
    const outcomes: string[] = [];
    const typical: Record<string, number> = { backup: 1000, prune: 40, gc: 400 };
    for (let round = 0; round < ROUNDS && Date.now() - t0 < BUDGET_MS; round++) {
      const op = ops[round];
      // a random moment within what this operation last took here once it held its lock
      const killAfter = rng.int(Math.max(5, Math.round(typical[op] * 0.9)));
      let run: KillRun;
      if (op === 'backup') run = await backup(killAfter);
      else if (op === 'prune') run = await runAndKill(['prune', pruneJob], locks(), { at: 'lock', afterMs: killAfter });
      else {
        typical.backup = (await backup(60_000)).heldMs ?? typical.backup; // gives gc garbage: the backup's retention drops a point
        run = await runAndKill(['gc', job, '--grace', '0', '--rewrite-threshold', '5%'], locks(), { at: 'lock', afterMs: killAfter });
      }
      const outcome = run.outcome;
      if (outcome === 'finished') typical[op] = run.heldMs ?? typical[op];
      outcomes.push(`${op} ${outcome} after ${killAfter} ms`);
      await checkRepository(`round ${round} (${op}, ${outcome} after ${killAfter} ms)`);
    }
    expect(outcomes.length, outcomes.join('\n')).to.be.at.least(3);
    if (process.env.FERRY_TEST_VERBOSE) console.log(outcomes.join('\n'));
    // and a final, uninterrupted collection leaves a clean, complete repository
    const gc = await runFerry(['gc', job, '--grace', '0', '--json']);
    expect(gc.code, gc.stderr).to.equal(0);
    expect(json<{ pending: { packs: number } }>(gc).pending.packs).to.equal(0);
    await checkRepository('after the final gc');
  });
});
