import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { sortPoints } from '@ferry/core';
import { changeVmImage, makeVmImage, Prng } from '@ferry/core/testing';
import { runAndKill, type KillMoment, type KillRun } from './run-and-kill.js';
import { DISK, KEEP, TortureRepo, VM, type ListedPoint } from './torture-repo.js';

export interface TortureOptions {
  /** Work folder (made and removed by the caller). */
  dir: string;
  rounds: number;
  /** Stop after this many kills even when rounds remain. */
  kills?: number;
  seed: number;
  /** No new round starts after this long. */
  maxSeconds: number;
  log(line: string): void;
}

export interface TortureResult {
  rounds: number;
  kills: number;
  /** Restore points listed and verified after a round (a point counts once per round). */
  checked: number;
  restored: number;
  /** One line per point lost, or per check that failed, saying which and why. */
  lost: string[];
  seconds: number;
}

type Op = 'backup' | 'prune' | 'gc' | 'key' | 'forget';
const OPS: [Op, number][] = [['backup', 40], ['prune', 15], ['gc', 20], ['key', 15], ['forget', 10]];
const MiB = 1024 * 1024;

/** A committed point the torture knows about: the copy of the image taken when its backup started. */
interface Known {
  copy: string;
  round: number;
  restored: boolean;
}

/** One round's plan: the command, and what it may remove. */
interface Plan {
  op: Op;
  label: string;
  args: string[];
  /** Points this operation may remove (prune: all but the newest KEEP; forget: its target). */
  mayRemove: Set<string>;
  copy?: string;
  newPass?: number;
}

/**
 * Kill -9 torture of one encrypted repository through the real CLI: every round runs one operation
 * (backup after changing the image, prune, gc, key change, forget), picked by a seeded PRNG, and
 * kills it at a random moment: before it took its lock, after, or not at all. Then the repository
 * must pass `ferry verify`, every point known before must still be listed (unless this round's prune
 * or forget may remove it) and not damaged, and every new point must restore byte-identical to the
 * copy of the image taken when its backup started.
 */
export class Torture {
  private readonly rng: Prng;
  private readonly repo: TortureRepo;
  private readonly image: string;
  private readonly known = new Map<string, Known>();
  private readonly lost: string[] = [];
  /** Points already reported lost (damaged, or restoring wrong): not reported again while listed. */
  private readonly writtenOff = new Set<string>();
  private pass = 0;
  private passes = 0;
  private copies = 0;
  private kills = 0;
  private roundNo = 0;
  private checked = 0;
  private restored = 0;
  /** What each operation took here, updated from runs that finished: start to lock, lock to end. */
  private readonly startupMs: Record<Op, number> = { backup: 1200, prune: 1200, gc: 1200, key: 1200, forget: 1200 };
  private readonly heldMs: Record<Op, number> = { backup: 1500, prune: 300, gc: 800, key: 1200, forget: 200 };
  readonly moments = { beforeLock: 0, afterLock: 0, finished: 0 };

  constructor(private readonly opts: TortureOptions) {
    this.rng = new Prng(opts.seed);
    this.repo = new TortureRepo(opts.dir);
    this.image = path.join(opts.dir, 'images', DISK);
  }

  async run(): Promise<TortureResult> {
    const t0 = performance.now();
    await this.setUp();
    let round = 0;
    while (round < this.opts.rounds && this.kills < (this.opts.kills ?? Infinity) && performance.now() - t0 < this.opts.maxSeconds * 1000) {
      round++;
      if (!(await this.round(round))) break;
    }
    return { rounds: round, kills: this.kills, checked: this.checked, restored: this.restored, lost: this.lost, seconds: (performance.now() - t0) / 1000 };
  }

  /** A 16 MiB image, the first passphrase, and two uninterrupted backups to start from. */
  private async setUp(): Promise<void> {
    mkdirSync(path.dirname(this.image), { recursive: true });
    mkdirSync(path.join(this.opts.dir, 'copies'));
    await makeVmImage(this.image, { sizeBytes: 16 * MiB, seed: this.opts.seed, holes: 0.1 });
    this.repo.addPassphrase(0, this.opts.seed);
    for (let i = 0; i < 2; i++) {
      const plan = await this.backupPlan();
      const run = await runAndKill(plan.args, this.repo.locks, { at: 'never' });
      if (run.code !== 0) throw new Error(`set-up backup failed: ${run.stderr}`);
      const opened = await this.repo.open(this.pass);
      if (!opened.ok) throw new Error(`set-up: ${opened.detail}`);
      for (const p of opened.points) if (!this.known.has(p.id)) this.known.set(p.id, { copy: plan.copy!, round: 0, restored: false });
    }
    this.opts.log(`torture: seed ${this.opts.seed}, ${this.known.size} points to start from, work folder ready`);
  }

  /** Runs one round; false when the repository can no longer be opened at all (nothing left to check). */
  private async round(round: number): Promise<boolean> {
    this.roundNo = round;
    const before = sortPoints([...this.known.keys()].map((id) => ({ id }))).map((p) => p.id);
    const plan = await this.plan(before);
    const moment = this.moment(plan.op);
    const run = await runAndKill(plan.args, this.repo.locks, moment);
    const what = `round ${round} ${plan.label} ${this.describe(moment, run)}`;
    const problems: string[] = [];
    const lose = (line: string): void => {
      problems.push(line);
      this.lost.push(`${what}: ${line}`);
    };
    if (run.outcome === 'killed') this.kills++;
    else {
      if (run.lockAfterMs !== undefined) this.startupMs[plan.op] = run.lockAfterMs;
      if (run.heldMs !== undefined) this.heldMs[plan.op] = run.heldMs;
      if (run.code !== 0) lose(`it finished with exit ${run.code}: ${run.stderr.trim().split('\n').slice(-2).join(' | ')}`);
    }
    // Stale locks do not stop the next command (it ignores them), but `ferry unlock` must clear them.
    const unlocked = this.repo.hasLocks() ? await this.repo.unlock(this.pass) : 0;
    if (this.repo.hasLocks()) lose('ferry unlock left a lock behind with no process running');
    const passBefore = this.pass;
    const points = await this.openAfter(plan, run, lose);
    if (!points) {
      this.opts.log(`${what}: the repository does not open`);
      return false;
    }
    // verify reads every block while the new points are restored: two read-only commands at once
    const [damage, restoredNow] = await Promise.all([
      this.repo.verify(this.pass),
      (async () => {
        this.compare(plan, run, points, lose);
        return this.restoreNew(lose);
      })(),
    ]);
    if (damage) lose(`ferry verify fails: ${damage}`);
    this.checked += points.length;
    this.dropUnusedCopies();
    const notes = [`verify ${damage ? 'FAILED' : 'ok'}`, `${points.length} point(s) listed`, `${restoredNow} restored`];
    if (plan.newPass !== undefined) notes.push(`passphrase ${this.pass === passBefore ? `${passBefore} (the old one)` : `${this.pass} (the new one)`} opens it`);
    if (unlocked) notes.push(`${unlocked} stale lock(s) removed`);
    this.opts.log(`${what}: ${problems.length ? `${problems.length} PROBLEM(S)` : 'ok'} (${notes.join(', ')})`);
    return true;
  }

  private async plan(before: string[]): Promise<Plan> {
    let op = this.pick();
    if (op === 'forget' && before.length < 2) op = 'backup'; // keep a point to check
    const job = this.repo.job(this.pass);
    switch (op) {
      case 'backup':
        return this.backupPlan();
      case 'prune':
        return { op, label: `prune (keep ${KEEP})`, args: ['prune', this.repo.pruneJob(this.pass), '--json'], mayRemove: new Set(before.slice(0, -KEEP)) };
      case 'gc': {
        const grace = this.rng.int(2) === 0 ? '0s' : '1h';
        const rewrite = this.rng.int(2) === 0 ? ['--rewrite-threshold', '5%'] : [];
        return { op, label: `gc --grace ${grace}${rewrite.length ? ' --rewrite-threshold 5%' : ''}`, args: ['gc', job, '--grace', grace, ...rewrite, '--json'], mayRemove: new Set() };
      }
      case 'key': {
        const n = ++this.passes;
        this.repo.addPassphrase(n, this.opts.seed);
        return { op, label: `key change ${this.pass}->${n}`, args: ['key', 'change', job, '--new-passphrase-file', this.repo.passFile(n), '--json'], mayRemove: new Set(), newPass: n };
      }
      case 'forget': {
        const target = before[this.rng.int(before.length)];
        return { op, label: `forget ${target}`, args: ['forget', job, '--vm', VM, '--point', target, '--json'], mayRemove: new Set([target]) };
      }
    }
  }

  /** Changes the image, then copies it: a point this backup commits must restore to that copy. */
  private async backupPlan(): Promise<Plan> {
    await changeVmImage(this.image, { count: 1 + this.rng.int(24), length: 64 * 1024, seed: this.rng.int(2 ** 31) });
    const copy = path.join(this.opts.dir, 'copies', `disk-${this.copies++}.raw`);
    copyFileSync(this.image, copy);
    return { op: 'backup', label: 'backup', args: ['backup', this.repo.job(this.pass), '--json'], mayRemove: new Set(), copy };
  }

  private pick(): Op {
    let r = this.rng.int(OPS.reduce((n, [, w]) => n + w, 0));
    for (const [op, w] of OPS) if ((r -= w) < 0) return op;
    return 'backup';
  }

  /** A random moment within what this operation took here: 20% before its lock, 65% after, 15% never. */
  private moment(op: Op): KillMoment {
    const r = this.rng.next();
    if (r < 0.2) return { at: 'spawn', afterMs: this.rng.int(Math.round(this.startupMs[op] * 1.1)) };
    if (r < 0.85) return { at: 'lock', afterMs: this.rng.int(Math.max(5, Math.round(this.heldMs[op] * 1.2))) };
    return { at: 'never' };
  }

  private describe(moment: KillMoment, run: KillRun): string {
    if (run.outcome === 'finished') {
      this.moments.finished++;
      return `finished (exit ${run.code}, ${Math.round(run.totalMs)} ms)`;
    }
    const locked = run.lockAfterMs !== undefined;
    this.moments[locked ? 'afterLock' : 'beforeLock']++;
    const after = moment.at === 'lock' ? `${moment.afterMs} ms after its lock` : `${moment.at === 'spawn' ? moment.afterMs : '?'} ms after start`;
    return `killed ${after} (${locked ? `it had taken its lock ${Math.round(run.heldMs!)} ms before` : 'before its lock'})`;
  }

  /**
   * Lists the points with the current passphrase. After a key change, finds out which passphrase
   * opens the repository now: a finished change leaves only the new one; a killed one the old, the
   * new, or both; never neither.
   */
  private async openAfter(plan: Plan, run: KillRun, lose: (line: string) => void): Promise<ListedPoint[] | undefined> {
    if (plan.newPass === undefined) {
      const o = await this.repo.open(this.pass);
      if (o.ok) return o.points;
      lose(`ferry list fails: ${o.detail}; all ${this.known.size} known point(s) unreachable`);
      return undefined;
    }
    const [oldOpen, newOpen] = [await this.repo.open(this.pass), await this.repo.open(plan.newPass)];
    if (run.outcome === 'finished' && run.code === 0 && (oldOpen.ok || !newOpen.ok)) {
      lose(`after a finished key change the old passphrase ${oldOpen.ok ? 'still opens' : 'opens'} and the new one ${newOpen.ok ? 'opens' : `does not (${newOpen.detail})`}`);
    }
    for (const o of [oldOpen, newOpen]) if (!o.ok && !o.wrongPassphrase) lose(`ferry list fails: ${o.detail}`);
    if (newOpen.ok) {
      if (oldOpen.ok) this.opts.log(`  both passphrases ${this.pass} and ${plan.newPass} open the repository now; ${plan.newPass} is current`);
      this.pass = plan.newPass;
      return newOpen.points;
    }
    if (oldOpen.ok) return oldOpen.points;
    lose(`neither the old passphrase ${this.pass} nor the new ${plan.newPass} opens the repository; all ${this.known.size} known point(s) unreachable`);
    return undefined;
  }

  /** Known points gone or damaged, points that appeared, and what a finished prune or forget left. */
  private compare(plan: Plan, run: KillRun, points: ListedPoint[], lose: (line: string) => void): void {
    const listed = new Map(points.map((p) => [p.id, p]));
    for (const [id, k] of this.known) {
      const p = listed.get(id);
      if (!p) {
        if (!plan.mayRemove.has(id)) lose(`point ${id} (backup of round ${k.round}) is gone, and ${plan.op} may not remove it`);
        this.known.delete(id);
      } else if (p.status === 'damaged') {
        lose(`point ${id} (backup of round ${k.round}) is damaged: ${p.code}: ${p.reason}`);
        this.writeOff(id);
      } else if (plan.mayRemove.has(id) && run.outcome === 'finished' && run.code === 0) {
        lose(`point ${id} is still listed after ${plan.label} finished`);
      }
    }
    const fresh = points.filter((p) => !this.known.has(p.id) && !plan.mayRemove.has(p.id) && !this.writtenOff.has(p.id));
    if (plan.op === 'backup' && run.outcome === 'finished' && run.code === 0 && fresh.length !== 1) lose(`the finished backup committed ${fresh.length} point(s), not 1`);
    for (const p of fresh) {
      if (plan.op !== 'backup' || fresh.length > 1) {
        lose(`point ${p.id} (${p.status}) appeared after ${plan.label}`);
        this.writeOff(p.id);
      } else if (p.status === 'damaged') {
        lose(`the new point ${p.id} is damaged: ${p.code}: ${p.reason}`);
        this.writeOff(p.id);
      } else this.known.set(p.id, { copy: plan.copy!, round: this.roundNo, restored: false });
    }
  }

  /**
   * Restores every point not restored yet, and one older point in four rounds (verify has read all
   * their blocks already; this also goes through restore); returns how many.
   */
  private async restoreNew(lose: (line: string) => void): Promise<number> {
    const old = [...this.known.keys()].filter((id) => this.known.get(id)!.restored);
    const sample = old.length && this.rng.int(4) === 0 ? old[this.rng.int(old.length)] : undefined;
    let n = 0;
    for (const [id, k] of this.known) {
      if (k.restored && id !== sample) continue;
      const why = await this.repo.restoreDiffers(this.pass, id, k.copy);
      n++;
      this.restored++;
      if (why) {
        lose(`point ${id} (backup of round ${k.round}): ${why}`);
        this.writeOff(id);
      } else k.restored = true;
    }
    return n;
  }

  private writeOff(id: string): void {
    this.known.delete(id);
    this.writtenOff.add(id);
  }

  private dropUnusedCopies(): void {
    const used = new Set([...this.known.values()].map((k) => k.copy));
    for (let i = 0; i < this.copies; i++) {
      const f = path.join(this.opts.dir, 'copies', `disk-${i}.raw`);
      if (!used.has(f)) rmSync(f, { force: true });
    }
  }
}
