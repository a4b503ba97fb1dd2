import { randomBytes } from 'node:crypto';
import { expect } from 'chai';
import { FerryError } from '@ferry/core';
import { runRepositoryConformance } from '@ferry/core/testing';
import { S3Backend, type S3RepositoryConfig } from '@ferry/repo-s3';
import { startS3Server, type S3Server } from './support/s3-server.js';

let server: S3Server | undefined;

// Inside a suite of its own: top-level hooks would be root hooks of the whole mocha run.
describe('S3 backend on s3rver', function () {
  before(async () => {
    server = await startS3Server();
  });
  after(async () => {
    await server?.stop();
  });

  function backend(extra: Partial<S3RepositoryConfig> = {}, opts: ConstructorParameters<typeof S3Backend>[1] = {}): S3Backend {
    const cfg = server!.repository(`r${randomBytes(6).toString('hex')}/`, extra) as unknown as S3RepositoryConfig;
    return new S3Backend(cfg, { env: server!.env, backoffMs: 20, ...opts });
  }

  runRepositoryConformance('s3 (s3rver)', async () => {
    const b = backend();
    return {
      backend: b,
      cleanup: async () => {
        for await (const k of b.list('')) await b.delete(k).catch(() => undefined);
      },
    };
  });

  describe('s3 backend specifics (s3rver)', function () {
    it('finds that s3rver ignores If-None-Match and uses the fallback, still creating once', async function () {
      const b = backend();
      expect(await b.putIfAbsent('points/a.json', Buffer.from('1'))).to.equal(true);
      expect(await b.putIfAbsent('points/a.json', Buffer.from('2'))).to.equal(false);
      expect(Buffer.from(await b.get('points/a.json')).toString()).to.equal('1');
      const keys: string[] = [];
      for await (const k of b.list('')) keys.push(k);
      expect(keys).to.deep.equal(['points/a.json'], 'the probe object is gone and never listed');
      // The probe ran once: two PUTs with If-None-Match (both accepted by s3rver), one DELETE.
      expect(b.requestCounts().DELETE).to.equal(1);
      await b.close();
    });

    it('uploads large objects in parts and reads ranges', async function () {
      const b = backend({}, { multipartThreshold: 6 * 1024 * 1024, partSize: 5 * 1024 * 1024 });
      const big = randomBytes(12 * 1024 * 1024);
      const before = b.requestCounts().PUT;
      await b.put('packs/aa/big', big);
      // CreateMultipartUpload, three parts, CompleteMultipartUpload.
      expect(b.requestCounts().PUT - before).to.equal(5);
      expect(Buffer.from(await b.get('packs/aa/big')).equals(big)).to.equal(true);
      expect(Buffer.from(await b.getRange('packs/aa/big', 6_000_000, 100)).equals(big.subarray(6_000_000, 6_000_100))).to.equal(true);
      await b.close();
    });

    it('lists across pages', async function () {
      this.timeout(120_000);
      const b = backend({ requests: 32 });
      await Promise.all(Array.from({ length: 1010 }, (_, i) => b.put(`index/${String(i).padStart(4, '0')}`, Buffer.from([i & 255]))));
      let n = 0;
      for await (const _ of b.list('index/')) n++;
      expect(n).to.equal(1010);
      expect(b.requestCounts().LIST).to.equal(2);
      await b.close();
    });

    it('fails fast, naming the bucket, on a missing bucket and on wrong credentials', async function () {
      const missing = new S3Backend({ ...(server!.repository('p/') as unknown as S3RepositoryConfig), bucket: 'no-such-bucket' }, { env: server!.env, backoffMs: 20 });
      const t0 = Date.now();
      await missing.get('config').then(
        () => expect.fail('read from a missing bucket'),
        (err: FerryError) => {
          expect(err.code).to.equal('REPO_IO');
          expect(err.message).to.include('no-such-bucket').and.include('not retried');
        },
      );
      expect(Date.now() - t0).to.be.below(5000);
      const bad = backend({ credentials: { accessKeyIdEnv: 'K', secretAccessKeyEnv: 'S' } }, { env: { K: 'WRONG', S: 'very-secret-value' } });
      await bad.get('config').then(
        () => expect.fail('read with wrong credentials'),
        (err: FerryError) => {
          expect(err.code).to.equal('REPO_IO');
          expect(err.message).to.include(server!.bucket).and.include('not retried');
          expect(err.message).not.to.include('very-secret-value');
        },
      );
    });

    it('names a missing credentials variable, never a value', function () {
      expect(() => backend({ credentials: { accessKeyIdEnv: 'K', secretAccessKeyEnv: 'S' } }, { env: { K: 'id' } }))
        .to.throw(FerryError)
        .with.property('message')
        .that.includes('environment variable S is not set');
    });

    it('objectLock: required on a bucket without Object Lock is REPO_OBJECT_LOCK', async function () {
      const b = backend({ objectLock: 'required' });
      await b.put('config', Buffer.from('x')).then(
        () => expect.fail('wrote without Object Lock'),
        (err: FerryError) => {
          expect(err.code).to.equal('REPO_OBJECT_LOCK');
          expect(err.message).to.include(server!.bucket);
        },
      );
      const auto = backend({ objectLock: 'auto' });
      await auto.put('config', Buffer.from('x'));
      expect(auto.notes.join(' ')).to.match(/no Object Lock/);
    });
  });
});
