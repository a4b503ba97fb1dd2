import path from 'node:path';
import { expect } from 'chai';
import { json, ROOT, runFerry } from './support/helpers.js';

describe('ferry command line', function () {
  it('--help lists the verbs and exits 0', async function () {
    const r = await runFerry(['--help']);
    expect(r.code).to.equal(0);
    for (const verb of ['backup <job>', 'list <job>', 'restore <job>', 'plugins', 'validate <job>']) expect(r.stdout).to.include(verb);
  });

  it('no command, an unknown flag, or a missing option is CLI_USAGE with exit 2', async function () {
    for (const args of [[], ['backup', 'x.yaml', '--frobnicate'], ['restore', 'x.yaml', '--disk', 'd', '--to', 'out']]) {
      const r = await runFerry(args);
      expect(r.code, args.join(' ')).to.equal(2);
      expect(r.stderr, args.join(' ')).to.match(/^ferry: CLI_USAGE: /);
    }
  });

  it('a missing job file is JOB_FILE_NOT_FOUND naming the file, as JSON with --json', async function () {
    const r = await runFerry(['backup', 'no-such-job.yaml', '--json']);
    expect(r.code).to.equal(2);
    const err = json<{ error: { code: string; where: { file: string } } }>(r).error;
    expect(err.code).to.equal('JOB_FILE_NOT_FOUND');
    expect(err.where.file).to.equal(path.join(ROOT, 'no-such-job.yaml'));
  });
});
