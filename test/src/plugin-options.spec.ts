import { copyFileSync, cpSync, mkdirSync, openSync, closeSync, readFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, JobRuntime } from '@ferry/core';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';
import { storedBlocks } from './support/repo-inspect.js';

/**
 * Plugins chosen and configured by the job file alone: a third party's compressor (`ferry-brotli`,
 * its quality as the level) and block filter with options (`ferry-marker-filter`), both copied out of
 * the repository into a temporary folder that the job's `plugins:` key names, so neither can lean on
 * the workspace's packages.
 */
const THIRD_PARTY = path.join(ROOT, 'test', 'fixtures', 'third-party');
const BLOCK = 256 * 1024;
const MARKER = 'SCRATCH-7';

function job(opts: { filters?: string; compression?: string; repo?: string }): string {
  return [
    'job: vendor-job',
    'plugins: [./vendor]',
    'source:',
    '  host: file',
    '  datastore: ./images',
    '  vms:',
    '    - name: web01',
    '      disks: [vm.raw]',
    'repository:',
    '  type: filesystem',
    `  path: ${opts.repo ?? './repo'}`,
    'storage:',
    '  blockSize: 256KiB',
    `  compression: ${opts.compression ?? '{ compressor: brotli, level: 9 }'}`,
    `filters: ${opts.filters ?? `[zero, { name: marker, marker: ${MARKER}, at: 16 }]`}`,
    '',
  ].join('\n');
}

function writeAt(file: string, offset: number, text: string): void {
  const fd = openSync(file, 'r+');
  try {
    writeSync(fd, Buffer.from(text, 'ascii'), 0, text.length, offset);
  } finally {
    closeSync(fd);
  }
}

/** The compressor name recorded in a stored block object's header (docs/repository-format.md). */
function codecOf(b: { file: string; offset: number; length: number }): string {
  const obj = readFileSync(b.file).subarray(b.offset, b.offset + b.length);
  return obj.subarray(10, 10 + obj[9]).toString('ascii');
}

async function openFailure(file: string): Promise<FerryError> {
  try {
    const rt = await JobRuntime.open(file);
    await rt.close();
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('the job opened but should have been refused');
}

describe('plugins configured from the job file (third-party packages outside the workspace)', function () {
  const t = tempDir();
  const image = path.join(t.dir, 'images', 'vm.raw');
  const expected = path.join(t.dir, 'expected.raw');
  after(() => t.cleanup());

  before(async function () {
    cpSync(THIRD_PARTY, path.join(t.dir, 'vendor'), { recursive: true });
    mkdirSync(path.dirname(image));
    await makeVmImage(image, { sizeBytes: 4 * 1024 * 1024, seed: 12, holes: 0.1 });
    // block 3 carries the marker where the job says (at 16): dropped; block 5 at 0: kept
    writeAt(image, 3 * BLOCK + 16, MARKER);
    writeAt(image, 5 * BLOCK, MARKER);
    copyFileSync(image, expected);
    writeAt(expected, 3 * BLOCK, '\0'.repeat(BLOCK));
  });

  it('backs up through both, and restores what the filter kept byte-identical', async function () {
    const file = writeJob(t.dir, job({}));
    const r = await runFerry(['backup', file, '--json']);
    expect(r.code, r.stdout + r.stderr).to.equal(0);
    const report = json<{ compression: string; disks: { restorePoint: string; blocks: { zero: number } }[] }>(r);
    expect(report.compression).to.equal('brotli level 9');
    const codecs = new Set(storedBlocks(path.join(t.dir, 'repo')).map(codecOf));
    expect([...codecs]).to.include('brotli');
    expect([...codecs].every((c) => c === 'brotli' || c === 'none'), [...codecs].join(', ')).to.equal(true);

    // restored by a job that compresses otherwise now: the worker threads find brotli by its name
    const restoreJob = writeJob(t.dir, job({ compression: 'high', filters: '[zero]' }), 'restore.yaml');
    const out = path.join(t.dir, 'restored.raw');
    const rr = await runFerry(['restore', restoreJob, '--vm', 'web01', '--disk', 'vm.raw', '--point', report.disks[0].restorePoint, '--to', out]);
    expect(rr.code, rr.stderr).to.equal(0);
    expect(await firstDifference(expected, out)).to.equal(-1);
    expect(await firstDifference(image, out), 'the filter dropped the marked block').to.equal(3 * BLOCK);
  });

  it('the level reaches the compressor in the worker threads', async function () {
    const sent: number[] = [];
    for (const level of [0, 11]) {
      const file = writeJob(t.dir, job({ compression: `{ compressor: brotli, level: ${level} }`, repo: `./repo-${level}` }), `level-${level}.yaml`);
      const r = await runFerry(['backup', file, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      sent.push(json<{ disks: { bytesTransferred: number }[] }>(r).disks[0].bytesTransferred);
    }
    expect(sent[1]).to.be.lessThan(sent[0]);
  });

  it('without a level the compressor gets the default it declares', async function () {
    const rt = await JobRuntime.open(writeJob(t.dir, job({ compression: '{ compressor: brotli }' }), 'default.yaml'));
    try {
      expect(rt.spec.storage.compressor).to.deep.equal({ name: 'brotli', level: 5 });
      expect(rt.spec.filterOptions).to.deep.equal([{}, { marker: MARKER, at: 16 }]);
    } finally {
      await rt.close();
    }
  });

  const bad: { name: string; yaml: string; line: number; column: number; path: string; message: string }[] = [
    { name: 'a level out of the compressor\'s range', yaml: job({ compression: '{ compressor: brotli, level: 12 }' }), line: 14, column: 45, path: 'storage.compression.level', message: 'must be <= 11' },
    { name: 'a filter option of the wrong type', yaml: job({ filters: '[zero, { name: marker, marker: SCRATCH-7, at: -1 }]' }), line: 15, column: 56, path: 'filters[1].at', message: 'must be >= 0' },
    { name: 'a missing filter option', yaml: job({ filters: '[zero, { name: marker }]' }), line: 15, column: 17, path: 'filters[1].marker', message: 'missing key "marker"' },
    { name: 'an unknown filter option', yaml: job({ filters: '[zero, { name: marker, marker: SCRATCH-7, size: 4 }]' }), line: 15, column: 52, path: 'filters[1].size', message: 'allowed here: name, marker, at' },
  ];
  for (const c of bad) {
    it(`refuses ${c.name} as JOB_INVALID at file:line`, async function () {
      const file = writeJob(t.dir, c.yaml, 'bad.yaml');
      const err = await openFailure(file);
      expect(err.code, err.message).to.equal('JOB_INVALID');
      expect(err.where, err.message).to.include({ file, line: c.line, column: c.column, path: c.path });
      expect(err.message).to.include(c.message);
    });
  }

  it('the CLI says where, and exits 2', async function () {
    const file = writeJob(t.dir, job({ compression: '{ compressor: brotli, level: 12 }' }), 'bad-cli.yaml');
    const r = await runFerry(['validate', file]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/JOB_INVALID: .*bad-cli\.yaml:14:45, at storage\.compression\.level/);
  });
});
