import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { FIXTURE_PLUGINS } from './support/gated-backup.js';
import { FERRY_BIN, json, ROOT, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';

interface Report {
  status: string;
  vms: { vm: string; status: string; restorePoint: string | null }[];
  disks: { vm: string; disk: string; status: string; restorePoint: string | null }[];
}

/**
 * `parallelDisks`: disks of a job, across its VMs, move data at once up to the limit. The test-only
 * `gated-read` transport holds each disk before its last MiB until the test opens that disk's gate,
 * so "two disks in flight at once" is observed, not timed: with a limit of 2, two disks both reach
 * their gates while neither can finish, and the third cannot start until one does.
 */
describe('parallelDisks', function () {
  const t = tempDir();
  const ds = path.join(t.dir, 'images');
  const disks = { a1: path.join(ds, 'vma', 'a1.raw'), a2: path.join(ds, 'vma', 'a2.raw'), b1: path.join(ds, 'vmb', 'b1.raw') };
  after(() => t.cleanup());

  before(async function () {
    mkdirSync(path.join(ds, 'vma'), { recursive: true });
    mkdirSync(path.join(ds, 'vmb'), { recursive: true });
    await makeVmImage(disks.a1, { sizeBytes: 3 * 1024 * 1024, seed: 71, holes: 0.1 });
    await makeVmImage(disks.a2, { sizeBytes: 3 * 1024 * 1024, seed: 72, holes: 0.1 });
    await makeVmImage(disks.b1, { sizeBytes: 3 * 1024 * 1024, seed: 73, holes: 0.1 });
  });

  function job(limit: string): string {
    return writeJob(
      t.dir,
      [
        'job: parallel',
        `plugins: [${FIXTURE_PLUGINS}]`,
        'source:',
        '  host: file',
        '  datastore: ./images',
        '  vms:',
        '    - { name: vma, disks: [vma/a1.raw, vma/a2.raw] }',
        '    - { name: vmb, disks: [vmb/b1.raw] }',
        'transport: gated-read',
        'repository: { type: filesystem, path: ./repo }',
        'storage: { blockSize: 256KiB, compression: optimal }',
        limit,
      ].join('\n'),
      'parallel.yaml',
    );
  }

  async function until(what: string, cond: () => boolean, exited: () => string | undefined): Promise<void> {
    const deadline = Date.now() + 60_000;
    while (!cond()) {
      const out = exited();
      if (out !== undefined) throw new Error(`the backup ended before ${what}:\n${out}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  it('runs two disks at once, the third when a slot frees; reports stay in inventory order', async function () {
    const child = spawn(process.execPath, [FERRY_BIN, 'backup', job('parallelDisks: 2'), '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    let result: CliResult | undefined;
    const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve((result = { code, signal, stdout, stderr }))));
    const exited = (): string | undefined => (result ? `${result.stdout}\n${result.stderr}` : undefined);
    const waiting = (d: string): boolean => existsSync(`${d}.waiting`);
    try {
      // Two disks are in flight together: each waits at its gate while the other does. Which two
      // depends on which VM asks for a slot first (the VMs prepare concurrently); never all three.
      const names = Object.keys(disks) as (keyof typeof disks)[];
      const atGate = (): (keyof typeof disks)[] => names.filter((n) => waiting(disks[n]));
      await until('two disks both wait at their gates', () => atGate().length >= 2, exited);
      const first = atGate();
      expect(first, 'a third disk started beyond parallelDisks: 2').to.have.length(2);
      const third = names.find((n) => !first.includes(n))!;
      writeFileSync(`${disks[first[1]]}.gate`, '');
      await until(`${third} takes the slot ${first[1]} gave back`, () => waiting(disks[third]), exited);
      writeFileSync(`${disks[third]}.gate`, '');
      writeFileSync(`${disks[first[0]]}.gate`, '');
    } finally {
      for (const d of Object.values(disks)) writeFileSync(`${d}.gate`, '');
    }
    const r = await done;
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const rep = json<Report>(r);
    expect(rep.vms.map((v) => [v.vm, v.status])).to.deep.equal([
      ['vma', 'success'],
      ['vmb', 'success'],
    ]);
    expect(rep.disks.map((d) => `${d.vm}/${d.disk}`)).to.deep.equal(['vma/vma/a1.raw', 'vma/vma/a2.raw', 'vmb/vmb/b1.raw']);
    for (const d of rep.disks) expect(d.restorePoint, d.disk).to.be.a('string');
    for (const [vm, name, file] of [
      ['vma', 'vma/a1.raw', disks.a1],
      ['vma', 'vma/a2.raw', disks.a2],
      ['vmb', 'vmb/b1.raw', disks.b1],
    ]) {
      const out = path.join(t.dir, `restored-${path.basename(file)}`);
      const rr = await runFerry(['restore', job('parallelDisks: 2'), '--vm', vm, '--disk', name, '--point', 'latest', '--to', out]);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(await firstDifference(file, out), name).to.equal(-1);
    }
  });
});
