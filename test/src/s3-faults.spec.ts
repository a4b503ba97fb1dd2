import { randomBytes } from 'node:crypto';
import { cpSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';
import { S3Backend, type S3RepositoryConfig } from '@ferry/repo-s3';
import { startFaultProxy, type Fault } from './support/fault-proxy.js';
import { startFakeS3 } from './support/fake-s3.js';
import { json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startS3Server, type S3Server } from './support/s3-server.js';

const MiB = 1024 * 1024;
const CYCLE: Fault[] = ['slowdown', 'internal', 'reset-before', 'reset-after'];
/** Every third request fails, cycling through the faults. */
const everyThird = (n: number): Fault | undefined => (n % 3 === 2 ? CYCLE[Math.floor(n / 3) % CYCLE.length] : undefined);

describe('S3 faults: retries with backoff, permanent errors fail fast', function () {
  let s3: S3Server;
  before(async () => {
    s3 = await startS3Server();
  });
  after(async () => {
    await s3?.stop();
  });

  const config = (endpoint: string, prefix: string): S3RepositoryConfig => ({ ...(s3.repository(prefix) as unknown as S3RepositoryConfig), endpoint });

  it('every object lands and reads back through 503 SlowDown, 500, and resets before and after the store acts', async function () {
    const proxy = await startFaultProxy(s3.endpoint, everyThird);
    const b = new S3Backend(config(proxy.endpoint, 'faults-a/'), { env: s3.env, backoffMs: 5 });
    try {
      const data = Array.from({ length: 40 }, (_, i) => randomBytes(100 + i));
      const created = await Promise.all(data.map((d, i) => b.putIfAbsent(`packs/${String(i % 4).padStart(2, '0')}/k${i}`, d)));
      expect(created.every(Boolean), 'each putIfAbsent created its object once').to.equal(true);
      for (let i = 0; i < data.length; i++) expect(Buffer.from(await b.get(`packs/${String(i % 4).padStart(2, '0')}/k${i}`)).equals(data[i])).to.equal(true);
      let n = 0;
      for await (const _ of b.list('packs/')) n++;
      expect(n).to.equal(40);
      expect(b.requestCounts().retries).to.be.at.least(10);
      for (const f of CYCLE) expect(proxy.faults[f], f).to.be.at.least(2);
    } finally {
      await b.close();
      await proxy.stop();
    }
  });

  it('a conditional create whose answer was lost still reports that it created the object', async function () {
    const fake = await startFakeS3({ bucket: 'lock-bucket', objectLock: false });
    // The fake honours If-None-Match. The create's first attempt lands but its answer is dropped.
    // Deterministic: fault the request whose number is known. HEAD bucket (0), GET object-lock (1),
    // probe PUT (2), probe PUT (3), probe DELETE (4), the create (5).
    const p2 = await startFaultProxy(fake.endpoint, (n) => (n === 5 ? 'reset-after' : undefined));
    const b = new S3Backend({ bucket: 'lock-bucket', endpoint: p2.endpoint, forcePathStyle: true, prefix: 'p/', credentials: 'env' }, { env: { AWS_ACCESS_KEY_ID: 'a', AWS_SECRET_ACCESS_KEY: 'b' }, backoffMs: 5 });
    try {
      expect(await b.putIfAbsent('points/vm/x.json', Buffer.from('mine'))).to.equal(true);
      expect(p2.faults['reset-after']).to.equal(1);
      expect(await b.putIfAbsent('points/vm/x.json', Buffer.from('mine'))).to.equal(false);
      const condPuts = fake.seen.filter((r) => r.method === 'PUT' && r.key === 'p/points/vm/x.json');
      expect(condPuts.every((r) => r.headers['if-none-match'] === '*')).to.equal(true);
    } finally {
      await b.close();
      await p2.stop();
      await fake.stop();
    }
  });

  it('a failed first check of the bucket is not remembered: the next operation checks again', async function () {
    const proxy = await startFaultProxy(s3.endpoint, (n) => (n === 0 ? 'forbidden' : undefined));
    const b = new S3Backend(config(proxy.endpoint, 'faults-r/'), { env: s3.env, backoffMs: 5 });
    try {
      await b.put('config', Buffer.from('x')).then(
        () => expect.fail('the 403 on HEAD bucket went unnoticed'),
        (err: FerryError) => expect(err.message).to.include('HTTP 403').and.include('not retried'),
      );
      await b.put('config', Buffer.from('y'));
      expect(Buffer.from(await b.get('config')).toString()).to.equal('y');
    } finally {
      await b.close();
      await proxy.stop();
    }
  });

  it('keeps at most `requests` requests in flight', async function () {
    const proxy = await startFaultProxy(s3.endpoint, () => undefined);
    const b = new S3Backend({ ...config(proxy.endpoint, 'faults-c/'), requests: 3 }, { env: s3.env });
    try {
      await Promise.all(Array.from({ length: 24 }, (_, i) => b.put(`blocks/k${i}`, randomBytes(64 * 1024))));
      expect(proxy.maxInFlight()).to.be.at.most(3).and.at.least(2);
    } finally {
      await b.close();
      await proxy.stop();
    }
  });

  it('a timeout is retried', async function () {
    const proxy = await startFaultProxy(s3.endpoint, (n) => (n === 2 ? 'slow' : undefined));
    const b = new S3Backend(config(proxy.endpoint, 'faults-t/'), { env: s3.env, backoffMs: 5, requestTimeoutMs: 500 });
    try {
      await b.put('config', Buffer.from('x'));
      expect(Buffer.from(await b.get('config')).toString()).to.equal('x');
      expect(b.requestCounts().retries).to.be.at.least(1);
    } finally {
      await b.close();
      await proxy.stop();
    }
  });

  it('403 AccessDenied fails at once, naming bucket and key, without retries', async function () {
    const proxy = await startFaultProxy(s3.endpoint, (n) => (n >= 2 ? 'forbidden' : undefined));
    const b = new S3Backend(config(proxy.endpoint, 'faults-f/'), { env: s3.env, backoffMs: 200 });
    try {
      await b.get('points/vm/p.json').then(
        () => expect.fail('read through a 403'),
        (err: FerryError) => {
          expect(err.code, err.message).to.equal('REPO_IO');
          expect(err.message, err.message).to.include(`s3://${s3.bucket}/faults-f/points/vm/p.json`).and.include('AccessDenied').and.include('not retried');
        },
      );
      expect(b.requestCounts().retries).to.equal(0);
    } finally {
      await b.close();
      await proxy.stop();
    }
  });

  it('a backup through a faulty link completes; verify and restore agree', async function () {
    const t = tempDir('ferry-s3faults-');
    const proxy = await startFaultProxy(s3.endpoint, (n) => (n % 7 === 3 ? CYCLE[Math.floor(n / 7) % CYCLE.length] : undefined));
    try {
      const env = { ...s3.env, FERRY_CACHE_DIR: path.join(t.dir, 'cache') };
      mkdirSync(path.join(t.dir, 'images'));
      const image = path.join(t.dir, 'images', 'web01.raw');
      await makeVmImage(image, { sizeBytes: 8 * MiB, seed: 9, holes: 0.2 });
      const repo = (endpoint: string): string =>
        `repository: { type: s3, bucket: ${s3.bucket}, prefix: faults-cli/, endpoint: '${endpoint}', region: us-east-1, forcePathStyle: true, credentials: env }`;
      const body = (endpoint: string): string =>
        ['job: faulty', 'source: { host: file, datastore: ./images, vms: [ { name: web01, disks: [web01.raw] } ] }', repo(endpoint), 'storage: { blockSize: 256KiB }', ''].join('\n');
      const job = writeJob(t.dir, body(proxy.endpoint));
      const direct = writeJob(t.dir, body(s3.endpoint), 'direct.yaml');
      for (let run = 0; run < 2; run++) {
        if (run === 1) await changeVmImage(image, { count: 4, length: 4096, seed: 2 });
        const r = await runFerry(['backup', job, '--json'], { env });
        expect(r.code, r.stderr + r.stdout).to.equal(0);
        json(r);
      }
      expect(Object.values(proxy.faults).reduce((a, b) => a + b, 0)).to.be.at.least(8);
      cpSync(image, path.join(t.dir, 'copy'));
      const v = await runFerry(['verify', direct, '--json'], { env });
      expect(v.code, v.stderr + v.stdout).to.equal(0);
      const out = path.join(t.dir, 'restored');
      const r = await runFerry(['restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--to', out], { env });
      expect(r.code, r.stderr).to.equal(0);
      expect(await firstDifference(image, out)).to.equal(-1);
    } finally {
      await proxy.stop();
      t.cleanup();
    }
  });
});
