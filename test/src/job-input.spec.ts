import { existsSync, mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage } from '@ferry/core/testing';
import { basicJob, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';

/**
 * Job input the loader must refuse as bad input (exit 2, a coded error at the key) before anything
 * runs: a VM listed twice, disks outside the datastore, YAML alias bombs and oversized files.
 */
describe('checked job input (CLI)', function () {
  const t = tempDir();
  const images = path.join(t.dir, 'images');
  const outside = path.join(t.dir, 'outside.raw');
  after(() => t.cleanup());

  before(async function () {
    mkdirSync(images);
    for (const name of ['a.raw', 'c.raw']) await makeVmImage(path.join(images, name), { sizeBytes: 1024 * 1024, seed: 5 });
    await makeVmImage(outside, { sizeBytes: 1024 * 1024, seed: 6 });
    symlinkSync('../outside.raw', path.join(images, 'link.raw'));
  });

  /** Runs `ferry backup` on `yaml` in a fresh folder; the repository is `<folder>/repo`. */
  async function backup(name: string, yaml: string): Promise<CliResult & { repo: string }> {
    const dir = path.join(t.dir, name);
    mkdirSync(dir);
    symlinkSync(images, path.join(dir, 'images'));
    const r = await runFerry(['backup', writeJob(dir, yaml)]);
    return { ...r, repo: path.join(dir, 'repo') };
  }

  function expectRefused(r: CliResult, pattern: RegExp): void {
    expect(r.code, r.stderr).to.equal(2);
    expect(r.stderr).to.match(pattern);
    expect(r.stderr).not.to.match(/INTERNAL|\n\s+at /);
  }

  it('a VM listed twice is JOB_INVALID naming both lines, and nothing is backed up', async function () {
    const yaml = basicJob({ vm: 'vm3', disks: ['a.raw'] }).replace('transport: auto', '    - name: vm3\n      disks: [c.raw]\ntransport: auto');
    const r = await backup('vm-twice', yaml);
    expectRefused(r, /JOB_INVALID: vm "vm3" is listed twice \(job\.yaml:6:7 and job\.yaml:8:7\).*job\.yaml:8:7, at source\.vms\[1\]\.name/);
    expect(existsSync(r.repo), 'repository created').to.equal(false);
  });

  for (const [i, [label, disk]] of [
    ['../outside.raw', '../outside.raw'],
    ['a symbolic link inside the datastore to a file outside', 'link.raw'],
    ['an absolute path outside the datastore', outside],
  ].entries()) {
    it(`a disk outside the datastore (${label}) is JOB_INVALID at its key, and nothing is written`, async function () {
      const r = await backup(`outside-${i}`, basicJob({ disks: [disk] }));
      expectRefused(r, /JOB_INVALID: .*outside source\.datastore .*job\.yaml:7:15, at source\.vms\[0\]\.disks\[0\]\]/);
      expect(existsSync(r.repo), 'repository created').to.equal(false);
    });
  }

  it('commands that may run without the source (list) still refuse ../ in a disk path', async function () {
    const dir = path.join(t.dir, 'list-gone');
    mkdirSync(dir);
    const r = await runFerry(['list', writeJob(dir, basicJob({ datastore: './gone', disks: ['../outside.raw'] }))]);
    expectRefused(r, /JOB_INVALID: .*outside source\.datastore .*at source\.vms\[0\]\.disks\[0\]\]/);
  });

  it('a "billion laughs" alias bomb is JOB_INVALID at the alias, without a stack trace', async function () {
    // Unbounded, the nine levels stand for 9^9 values (out of memory); the refusal names the bound.
    this.timeout(60_000);
    const dir = path.join(t.dir, 'bomb');
    mkdirSync(dir);
    const lol = ['a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
    for (const [prev, name] of [...'abcdefgh'].map((c, i) => [c, 'bcdefghi'[i]])) lol.push(`${name}: &${name} [${Array(9).fill(`*${prev}`).join(', ')}]`);
    const file = writeJob(dir, `${basicJob({ disks: ['a.raw'] })}\n${lol.join('\n')}\n`);
    const r = await runFerry(['validate', file]);
    expectRefused(r, /JOB_INVALID: the YAML aliases .* expand to more than 100000 values .*job\.yaml:\d+:\d+, at \w\[0\]\]/);
  });

  it('a job file over 1 MiB is JOB_INVALID naming the limit, before it is parsed', async function () {
    const dir = path.join(t.dir, 'big');
    mkdirSync(dir);
    const padding = `# ${'x'.repeat(1022)}\n`.repeat(1024); // comments: the file is a valid job
    const file = path.join(dir, 'job.yaml');
    writeFileSync(file, `${basicJob({ disks: ['a.raw'] })}\n${padding}`);
    const r = await runFerry(['validate', file]);
    expectRefused(r, /JOB_INVALID: the job file is \d+ bytes; the limit for a job file is 1MiB \(1048576 bytes\)/);
  });

  it('an endless job file (a device) is read only up to the limit', async function () {
    if (!existsSync('/dev/zero')) this.skip();
    const r = await runFerry(['validate', '/dev/zero']);
    expectRefused(r, /JOB_INVALID: the job file is more than 1048576 bytes/);
  });
});
