import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, JobRuntime, runBackup, type ErrorLocation } from '@ferry/core';
import { makeVmImage } from '@ferry/core/testing';
import { ROOT, runFerry, tempDir } from './support/helpers.js';

/**
 * Fixture folders: `test/jobs/<case>/job.yaml` plus `expected.json` with the error's code, line,
 * column and key path. Each case runs in a temporary copy with `images/web01.raw` present.
 * `"stage": "backup"` cases fail only when the job runs (the source host finds the problem).
 */
interface Expected {
  code: string;
  line: number;
  column: number;
  path?: string;
  stage?: 'open' | 'backup';
  message?: string;
}

const JOBS = path.join(ROOT, 'test', 'jobs');

async function failureOf(jobFile: string, stage: 'open' | 'backup'): Promise<{ code: string; message: string; where: ErrorLocation }> {
  let rt: JobRuntime;
  try {
    rt = await JobRuntime.open(jobFile);
  } catch (err) {
    if (!(err instanceof FerryError)) throw err;
    return { code: err.code, message: err.message, where: err.where };
  }
  try {
    expect(stage, 'the job opened but the case expects it to fail there').to.equal('backup');
    const report = await runBackup(rt);
    const err = report.error ?? report.vms.find((v) => v.error)?.error;
    if (!err) throw new Error('the backup succeeded but the case expects it to fail');
    return err;
  } finally {
    await rt.close();
  }
}

describe('malformed job files (test/jobs/<case>)', function () {
  const cases = readdirSync(JOBS).filter((c) => existsSync(path.join(JOBS, c, 'expected.json')));
  const t = tempDir();
  after(() => t.cleanup());

  it('has fixture cases', function () {
    expect(cases.length).to.be.greaterThan(10);
  });

  for (const name of cases) {
    it(name, async function () {
      const expected = JSON.parse(readFileSync(path.join(JOBS, name, 'expected.json'), 'utf8')) as Expected;
      const dir = path.join(t.dir, name);
      cpSync(path.join(JOBS, name), dir, { recursive: true });
      mkdirSync(path.join(dir, 'images'), { recursive: true });
      await makeVmImage(path.join(dir, 'images', 'web01.raw'), { sizeBytes: 1024 * 1024, seed: 3 });
      const jobFile = path.join(dir, 'job.yaml');
      const got = await failureOf(jobFile, expected.stage ?? 'open');
      expect(got.code, got.message).to.equal(expected.code);
      expect(got.where.file, got.message).to.equal(jobFile);
      expect(got.where.line, got.message).to.equal(expected.line);
      expect(got.where.column, got.message).to.equal(expected.column);
      if (expected.path !== undefined) expect(got.where.path, got.message).to.equal(expected.path);
      expect(got.message).to.include(`job.yaml:${expected.line}:${expected.column}`);
      if (expected.message) expect(got.message).to.include(expected.message);
    });
  }

  it('a remote job resolves paths in transport options against its folder and leaves them to the proxy host', async function () {
    const dir = path.join(t.dir, 'remote-tls-paths');
    mkdirSync(path.join(dir, 'images'), { recursive: true });
    await makeVmImage(path.join(dir, 'images', 'web01.raw'), { sizeBytes: 1024 * 1024, seed: 3 });
    const jobFile = path.join(dir, 'job.yaml');
    writeFileSync(
      jobFile,
      [
        'job: nightly',
        'source: { host: file, datastore: ./images, vms: [ { name: web01, disks: [web01.raw] } ] }',
        'repository: { server: repo-host:7300 }',
        'certs: ./images',
        // no pki/ here: the CA file must exist where the proxy runs, which checks it
        'transport: { name: nbd, connections: 2, tls: { ca: ./pki/ca-cert.pem } }',
      ].join('\n'),
    );
    const rt = await JobRuntime.open(jobFile);
    try {
      expect(rt.spec.transportOptions).to.deep.equal({ connections: 2, tls: { ca: path.join(dir, 'pki', 'ca-cert.pem') } });
    } finally {
      await rt.close();
    }
  });

  it('the CLI prints the location and exits 2 on a malformed job', async function () {
    const r = await runFerry(['validate', path.join(JOBS, 'unknown-top-key', 'job.yaml')]);
    expect(r.code).to.equal(2);
    expect(r.stderr).to.match(/JOB_INVALID: unknown key "retension".*job\.yaml:11:1, at retension/);
  });
});
