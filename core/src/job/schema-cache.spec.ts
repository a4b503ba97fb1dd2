import { expect } from 'chai';
import { createHash } from 'node:crypto';
import { chmodSync, cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { compileSchema, type ContextKeyword, type KeywordFunction } from './schema-cache.js';

const KEYWORDS: ContextKeyword[] = [
  { keyword: 'ferryPath', schemaType: 'string', modifying: true },
  { keyword: 'ferryEven', error: { message: 'must be an even number' } },
];
const SCHEMA = {
  type: 'object',
  additionalProperties: false,
  properties: {
    // after ferryPath made it absolute, the pattern sees the new value
    file: { type: 'string', ferryPath: 'file', pattern: '^/base/' },
    n: { ferryEven: true },
  },
};
const fns: Record<string, KeywordFunction> = {
  ferryPath: (_kind, value, _s, ctx) => {
    (ctx.parentData as Record<string, unknown>)[ctx.parentDataProperty] = path.posix.join('/base', String(value));
    return true;
  },
  ferryEven: (_k, value) => typeof value === 'number' && value % 2 === 0,
};

describe('compileSchema: job-file validators kept in the cache folder', function () {
  let root: string;
  beforeEach(() => (root = mkdtempSync(path.join(os.tmpdir(), 'ferry-schemas-'))));
  afterEach(() => rmSync(root, { recursive: true, force: true }));
  const env = (dir: string) => ({ FERRY_CACHE_DIR: dir });
  const stored = (dir: string) => path.join(dir, 'schemas', readdirSync(path.join(dir, 'schemas'))[0]);

  it('validates with the keyword functions on `this`: a modifying keyword, a failing one with its message', function () {
    const v = compileSchema(SCHEMA, KEYWORDS, env(path.join(root, 'a')));
    const data = { file: 'disk.raw', n: 2 };
    expect(v.call(fns, data)).to.equal(true);
    expect(data.file).to.equal('/base/disk.raw');
    expect(v.call(fns, { n: 3 })).to.equal(false);
    expect(v.errors?.[0]).to.include({ keyword: 'ferryEven', instancePath: '/n', message: 'must be an even number' });
    expect(v.call(fns, { x: 1 })).to.equal(false);
    expect(v.errors?.[0].keyword).to.equal('additionalProperties');
  });

  it('a later process uses the stored code, only when its SHA-256 line matches and only this user may write it', function () {
    const a = path.join(root, 'a');
    compileSchema(SCHEMA, KEYWORDS, env(a));
    const file = stored(a);
    expect((readFileSync(file, 'utf8').match(/^\/\/ sha256 [0-9a-f]{64}\n/) ?? []).length).to.equal(1);
    // A stored validator that refuses everything, with a correct SHA-256 line: used as stored.
    const body = readFileSync(file, 'utf8').split('\n').slice(1).join('\n').replace('"use strict";', '"use strict";module.exports = () => false;if(0)');
    const forged = (dir: string, sha: string, mode: number) => {
      cpSync(a, dir, { recursive: true });
      writeFileSync(stored(dir), `// sha256 ${sha}\n${body}`);
      chmodSync(stored(dir), mode);
      return compileSchema(SCHEMA, KEYWORDS, env(dir)).call(fns, { n: 2 });
    };
    const sha = createHash('sha256').update(body).digest('hex');
    expect(forged(path.join(root, 'b'), sha, 0o600), 'matching line: the stored code runs').to.equal(false);
    expect(forged(path.join(root, 'c'), '0'.repeat(64), 0o600), 'wrong line: compiled again').to.equal(true);
    expect(forged(path.join(root, 'd'), sha, 0o622), 'writable by others: compiled again').to.equal(true);
  });

  it('works without a usable cache folder (compiled in memory)', function () {
    const blocked = path.join(root, 'file');
    writeFileSync(blocked, 'not a folder');
    expect(compileSchema(SCHEMA, KEYWORDS, env(blocked)).call(fns, { n: 4 })).to.equal(true);
  });
});
