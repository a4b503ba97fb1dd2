import { expect } from 'chai';
import { FerryError } from '../errors.js';
import { JobFile } from './job-loader.js';
import { MAX_ALIAS_EXPANSION, MAX_JOB_ANCHORS, MAX_JOB_FILE_BYTES } from './yaml-limits.js';

const HEAD = 'job: j\nrepository: { type: filesystem, path: ./repo }\nsource:\n  host: file\n  vms: [{ name: web01 }]\n';

function refusal(text: string): FerryError {
  try {
    JobFile.parse(text, '/jobs/job.yaml');
  } catch (err) {
    if (err instanceof FerryError) return err;
    throw err;
  }
  throw new Error('the job file was accepted');
}

function timed<T>(f: () => T): { value: T; ms: number } {
  const started = performance.now();
  const value = f();
  return { value, ms: performance.now() - started };
}

describe('job file limits (YAML aliases, size, repeated keys)', function () {
  it('a "billion laughs" document is JOB_INVALID at the alias that crosses the limit, in well under a second', function () {
    const lines = ['a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
    for (const [i, name] of [...'bcdefghi'].entries()) lines.push(`${name}: &${name} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(', ')}]`);
    const { value: err, ms } = timed(() => refusal(`${HEAD}${lines.join('\n')}\n`));
    expect(ms).to.be.below(500);
    expect(err.code, err.message).to.equal('JOB_INVALID');
    expect(err.where).to.include({ line: 11, column: 8, path: 'f[0]' });
    expect(err.detail).to.include(`more than ${MAX_ALIAS_EXPANSION} values`);
  });

  it('a few hundred aliases of small values are fine (the yaml package alone refuses over 100)', function () {
    const vms = Array.from({ length: 300 }, (_, i) => `    - { name: vm${i}, disks: ${i ? '*disks' : '&disks [a.raw]'} }`).join('\n');
    const job = JobFile.parse(`job: j\nrepository: { type: filesystem, path: ./repo }\nsource:\n  host: file\n  vms:\n${vms}\n`, '/jobs/job.yaml');
    expect((job.raw.source as { vms: { disks: string[] }[] }).vms[299].disks).to.deep.equal(['a.raw']);
  });

  it(`more than ${MAX_JOB_ANCHORS} anchors is refused quickly, not resolved alias by alias (quadratic)`, function () {
    this.timeout(20_000);
    const pairs = Array.from({ length: 40_000 }, (_, i) => `  - [&a${i} 1, *a${i}]`).join('\n');
    const { value: err, ms } = timed(() => refusal(`${HEAD}x:\n${pairs}\n`));
    expect(err.code, err.message).to.equal('JOB_INVALID');
    expect(err.where).to.include({ line: 7 + MAX_JOB_ANCHORS, path: `x[${MAX_JOB_ANCHORS}][0]` });
    expect(ms).to.be.below(10_000);
  });

  it('an alias with no anchor before it is JOB_INVALID at the alias', function () {
    const err = refusal(`${HEAD}  datastore: *images\n`);
    expect(err.code, err.message).to.equal('JOB_INVALID');
    expect(err.where).to.include({ line: 6, column: 14, path: 'source.datastore' });
  });

  it('a mapping of 80,000 keys is read in linear time, and a key repeated at its end is JOB_YAML_SYNTAX there', function () {
    this.timeout(20_000);
    const keys = Array.from({ length: 80_000 }, (_, i) => `  k${i}: v\n`).join('');
    const { value: err, ms } = timed(() => refusal(`${HEAD}${keys}  k0: again\n`));
    expect(err.code, err.message).to.equal('JOB_YAML_SYNTAX');
    expect(err.where).to.include({ line: 6 + 80_000, column: 3 });
    expect(err.detail).to.include('unique');
    expect(ms).to.be.below(10_000);
  });

  it(`a text over ${MAX_JOB_FILE_BYTES} bytes is JOB_INVALID before it is parsed`, function () {
    const err = refusal(`${HEAD}# ${'x'.repeat(MAX_JOB_FILE_BYTES)}\n`);
    expect(err.code).to.equal('JOB_INVALID');
    expect(err.detail).to.include(`limit for a job file is 1MiB (${MAX_JOB_FILE_BYTES} bytes)`);
  });
});
