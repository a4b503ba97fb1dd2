import { expect } from 'chai';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../errors.js';
import { JobFile } from './job-loader.js';
import { cachedJobValues, keepJobValues } from './job-values-cache.js';

describe('job values cache: a job file read again skips the YAML parser', function () {
  let root: string;
  let saved: string | undefined;
  beforeEach(() => {
    root = mkdtempSync(path.join(os.tmpdir(), 'ferry-jobs-'));
    saved = process.env.FERRY_CACHE_DIR;
    process.env.FERRY_CACHE_DIR = root;
  });
  afterEach(() => {
    if (saved === undefined) delete process.env.FERRY_CACHE_DIR;
    else process.env.FERRY_CACHE_DIR = saved;
    rmSync(root, { recursive: true, force: true });
  });
  const stored = () => readdirSync(path.join(root, 'jobs')).filter((f) => f.endsWith('.json'));

  it('keeps the values of a file that parsed, and errors after a cache hit still name file:line:column', function () {
    const text = 'job: j\nsource: { host: file, datastore: /nowhere, vms: [ { name: vm } ] }\nrepository: { type: filesystem, path: /r }\nbogus: 1\n';
    const fail = (): FerryError => {
      try {
        JobFile.parse(text, path.join(root, 'job.yaml'), { sourceMayBeGone: true });
      } catch (err) {
        return err as FerryError;
      }
      throw new Error('the job was accepted');
    };
    const first = fail();
    expect(stored()).to.have.length(1);
    const second = fail();
    expect(first.code).to.equal('JOB_INVALID');
    expect(second.where).to.deep.equal(first.where);
    expect(second.where).to.include({ line: 4, column: 1 });
  });

  it('gives back exactly what it kept, and keeps nothing JSON would change', function () {
    keepJobValues('a: 1', { a: 1, b: [true, null, 'x'] }, { p: 1 });
    expect(cachedJobValues('a: 1')).to.deep.equal({ values: { a: 1, b: [true, null, 'x'] }, positions: { p: 1 } });
    expect(cachedJobValues('a: 2')).to.equal(undefined);
    keepJobValues('n: .nan', { n: NaN }, {});
    keepJobValues('z: -0', { z: -0 }, {});
    expect(cachedJobValues('n: .nan')).to.equal(undefined);
    expect(cachedJobValues('z: -0')).to.equal(undefined);
    expect(stored()).to.have.length(1);
  });

  it('a syntax error is never kept and is reported as before', function () {
    expect(() => JobFile.parse('job: [unclosed\n', path.join(root, 'bad.yaml'))).to.throw(FerryError).with.property('code', 'JOB_YAML_SYNTAX');
    expect(() => readdirSync(path.join(root, 'jobs'))).to.throw();
  });

  it('a cache hit gives the same positions as the parsed document, for nodes, keys, missing and aliased paths', function () {
    const text = [
      'job: j   # a comment',
      'source:',
      '  host: file',
      '  datastore: /nowhere',
      '  vms:',
      '    - name: vm',
      '      disks: [a.raw, "b.raw"]',
      '    - { name: vm2 }',
      '  extra:',
      '    a: [ { b: 1 }, 2 ]',
      '    anchor: &x { deep: { deeper: 1 } }',
      '    alias: *x',
      '    5: five',
      '    "6": six',
      '    empty:',
      'repository: { type: filesystem, path: /r }',
      '',
    ].join('\n');
    const file = path.join(root, 'job.yaml');
    const paths: (string | number)[][] = [
      [], ['job'], ['nope'], ['source', 'vms', 0, 'disks', 1], ['source', 'vms', 1, 'name'], ['source', 'vms', 3], ['source', 'extra', 'a', 0, 'b'],
      ['source', 'extra', 'alias', 'deep'], ['source', 'extra', 'anchor', 'deep', 'deeper'], ['source', 'extra', 5], ['source', 'extra', '5'], ['source', 'extra', 6],
      ['source', 'extra', '6'], ['source', 'extra', 'empty'], ['source', 'extra', 'empty', 'x'],
    ];
    const keys: [(string | number)[], string][] = [
      [[], 'job'], [[], 'missing'], [['source'], 'extra'], [['source', 'extra'], 'a'], [['source', 'extra'], '5'], [['source', 'extra'], '6'], [['source', 'vms', 1], 'name'], [['source', 'extra', 'alias'], 'deep'],
    ];
    const look = () => {
      const job = JobFile.parse(text, file, { sourceMayBeGone: true });
      return { at: paths.map((p) => job.where(p)), keys: keys.map(([p, k]) => job.whereKey(p, k)) };
    };
    const parsed = look();
    expect(stored()).to.have.length(1);
    const hit = look();
    expect(hit).to.deep.equal(parsed);
    expect(parsed.at[7]).to.include({ line: 12 });
    expect(parsed.keys[5]).to.deep.include({ line: 14 });
  });
});
