import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import { ERROR_CODES, FerryError } from './errors.js';

describe('error codes', function () {
  it('docs/errors.md lists exactly the codes of the table, with the same meaning', function () {
    const doc = readFileSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../docs/errors.md'), 'utf8');
    const rows = [...doc.matchAll(/^\| `([A-Z_]+)` \| (.+?) \|/gm)].map((m) => [m[1], m[2]]);
    expect(rows.map((r) => r[0]).sort()).to.deep.equal(Object.keys(ERROR_CODES).sort());
    for (const [code, meaning] of rows) expect(meaning, code).to.equal(ERROR_CODES[code as keyof typeof ERROR_CODES]);
  });

  it('messages name code, file:line:column, key path and plugin', function () {
    const e = new FerryError('JOB_INVALID', 'bad', { file: '/j.yaml', line: 3, column: 7, path: 'source.vms[0]', plugin: 'p', hook: 'open' });
    expect(e.message).to.equal('JOB_INVALID: bad [/j.yaml:3:7, at source.vms[0], plugin p (open)]');
    expect(e.at({ disk: 'd', line: 9 }).where).to.include({ line: 3, disk: 'd' });
  });
});
