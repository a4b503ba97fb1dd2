import { closeSync, mkdirSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { makeVmImage } from '@ferry/core/testing';
import { basicJob, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

const EXAMPLES = path.join(ROOT, 'test', 'fixtures', 'plugins');
const BLOCK = 256 * 1024;

interface DiskOut {
  blocks: { zero: number; filtered?: Record<string, number> };
  restorePoint: string;
}

/** The manifest's disk entries of every point in `repo` (unencrypted, read from the files). */
function manifestDisks(repo: string): Record<string, unknown>[] {
  const dir = path.join(repo, 'points', 'web01');
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .flatMap((f) => (JSON.parse(readFileSync(path.join(dir, f), 'utf8')) as { disks: Record<string, unknown>[] }).disks);
}

describe('blocks a filter dropped are reported and recorded per filter', function () {
  const t = tempDir();
  after(() => t.cleanup());

  before(async function () {
    mkdirSync(path.join(t.dir, 'images'), { recursive: true });
    const image = path.join(t.dir, 'images', 'vm.raw');
    await makeVmImage(image, { sizeBytes: 8 * 1024 * 1024, seed: 11, holes: 0 });
    const fd = openSync(image, 'r+');
    for (const block of [3, 9]) writeSync(fd, Buffer.from('FERRY-SCRATCH'), 0, 13, block * BLOCK);
    closeSync(fd);
  });

  it('backup --json gives blocks.filtered per disk; the manifest names the filters that dropped data', async function () {
    const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], repo: './repo-marked', extra: `filters: [zero, scratch-marker]\nplugins: [${EXAMPLES}]` }), 'marked.yaml');
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const disk = json<{ disks: DiskOut[] }>(r).disks[0];
    expect(disk.blocks.filtered?.['scratch-marker']).to.equal(2);
    const byFilters = Object.values(disk.blocks.filtered ?? {}).reduce((a, b) => a + b, 0);
    expect(disk.blocks.zero).to.be.at.least(byFilters); // holes are zero blocks too
    const [entry] = manifestDisks(path.join(t.dir, 'repo-marked'));
    expect(entry.filtered).to.deep.equal({ 'scratch-marker': 2 }); // the built-in zero filter drops no data
  });

  it('without such a filter the manifest has no filtered field', async function () {
    const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], repo: './repo-plain' }), 'plain.yaml');
    const r = await runFerry(['backup', job, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const disk = json<{ disks: DiskOut[] }>(r).disks[0];
    expect(disk.blocks.filtered).to.be.an('object').that.does.not.have.property('scratch-marker');
    expect(manifestDisks(path.join(t.dir, 'repo-plain'))[0]).to.not.have.property('filtered');
  });
});
