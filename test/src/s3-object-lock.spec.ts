import { expect } from 'chai';
import { FerryError } from '@ferry/core';
import { S3Backend } from '@ferry/repo-s3';
import { startFakeS3 } from './support/fake-s3.js';

const ENV = { AWS_ACCESS_KEY_ID: 'AKIDEXAMPLE', AWS_SECRET_ACCESS_KEY: 'not-a-real-secret' };

/**
 * The requests Ferry sends for Object Lock and conditional writes, checked against a small fake S3
 * endpoint (no store with Object Lock can be installed here; the responses follow the AWS S3 API
 * reference). What AWS itself does with them is not verified here (plugins/repo-s3/README.md).
 */
describe('S3 Object Lock and conditional writes: the requests sent (fake endpoint)', function () {
  const backend = (endpoint: string, extra: Record<string, unknown> = {}): S3Backend =>
    new S3Backend({ bucket: 'locked', endpoint, forcePathStyle: true, prefix: 'repo/', credentials: 'env', objectLock: 'auto', ...extra }, { env: ENV, backoffMs: 5 });

  it('retain sends PutObjectRetention in compliance mode with the date, never shortens it, and delete before the date is REPO_IMMUTABLE without a DELETE', async function () {
    const fake = await startFakeS3({ bucket: 'locked', objectLock: true });
    const b = backend(fake.endpoint);
    try {
      expect(await b.putIfAbsent('packs/ab/abc', Buffer.from('pack'))).to.equal(true);
      const until = new Date(Math.ceil((Date.now() + 86_400_000) / 1000) * 1000);
      const got = await b.retain(['packs/ab/abc'], until);
      expect(got).to.deep.equal({ readOnly: true, immutable: true });
      const put = fake.seen.filter((r) => r.method === 'PUT' && r.query.startsWith('retention'));
      expect(put).to.have.length(1);
      expect(put[0].key).to.equal('repo/packs/ab/abc');
      expect(put[0].body, put[0].body).to.include('<Mode>COMPLIANCE</Mode>').and.include(`<RetainUntilDate>${until.toISOString().replace('.000Z', 'Z')}</RetainUntilDate>`);
      expect((await b.retainedUntil('packs/ab/abc'))?.toISOString()).to.equal(until.toISOString());
      await b.retain(['packs/ab/abc'], new Date(until.getTime() - 3_600_000)); // earlier: nothing sent
      expect(fake.seen.filter((r) => r.method === 'PUT' && r.query.startsWith('retention'))).to.have.length(1);
      await b.delete('packs/ab/abc').then(
        () => expect.fail('deleted a retained object'),
        (err: FerryError) => {
          expect(err.code).to.equal('REPO_IMMUTABLE');
          expect(err.message).to.include(until.toISOString());
        },
      );
      expect(fake.seen.filter((r) => r.method === 'DELETE' && r.key === 'repo/packs/ab/abc')).to.have.length(0);
      // No record objects: the store holds the dates.
      expect(fake.seen.some((r) => r.key.includes('mutable/retention'))).to.equal(false);
    } finally {
      await b.close();
      await fake.stop();
    }
  });

  it('objectLockMode: governance sends GOVERNANCE', async function () {
    const fake = await startFakeS3({ bucket: 'locked', objectLock: true });
    const b = backend(fake.endpoint, { objectLockMode: 'governance' });
    try {
      await b.put('points/vm/p.json', Buffer.from('m'));
      await b.retain(['points/vm/p.json'], new Date(Date.now() + 60_000));
      expect(fake.retention.get('repo/points/vm/p.json')?.mode).to.equal('GOVERNANCE');
    } finally {
      await b.close();
      await fake.stop();
    }
  });

  it('uses If-None-Match: * when the store honours it (probe), and a 412 is "exists"', async function () {
    const fake = await startFakeS3({ bucket: 'locked', objectLock: false });
    const b = backend(fake.endpoint);
    try {
      expect(await b.putIfAbsent('points/vm/p.json', Buffer.from('1'))).to.equal(true);
      expect(await b.putIfAbsent('points/vm/p.json', Buffer.from('2'))).to.equal(false);
      expect(Buffer.from(await b.get('points/vm/p.json')).toString()).to.equal('1');
      const puts = fake.seen.filter((r) => r.method === 'PUT' && r.key === 'repo/points/vm/p.json');
      expect(puts).to.have.length(2);
      expect(puts.every((r) => r.headers['if-none-match'] === '*')).to.equal(true);
      // No HEAD before the create: the fallback is not in use.
      expect(fake.seen.filter((r) => r.method === 'HEAD' && r.key === 'repo/points/vm/p.json')).to.have.length(0);
      expect(b.notes.join(' ')).to.match(/no Object Lock/);
    } finally {
      await b.close();
      await fake.stop();
    }
  });

  it('objectLock: required on a bucket without Object Lock is REPO_OBJECT_LOCK before anything is written', async function () {
    const fake = await startFakeS3({ bucket: 'locked', objectLock: false });
    const b = backend(fake.endpoint, { objectLock: 'required' });
    try {
      await b.putIfAbsent('config', Buffer.from('x')).then(
        () => expect.fail('wrote to a bucket without Object Lock'),
        (err: FerryError) => {
          expect(err.code).to.equal('REPO_OBJECT_LOCK');
          expect(err.message).to.include('locked').and.include('not enabled');
        },
      );
      expect(fake.seen.filter((r) => r.method === 'PUT')).to.have.length(0);
      expect(JSON.stringify(fake.seen.map((r) => r.headers))).not.to.include(ENV.AWS_SECRET_ACCESS_KEY);
    } finally {
      await b.close();
      await fake.stop();
    }
  });

  it('objectLock: off never asks for the bucket configuration', async function () {
    const fake = await startFakeS3({ bucket: 'locked', objectLock: true });
    const b = backend(fake.endpoint, { objectLock: 'off' });
    try {
      await b.put('config', Buffer.from('x'));
      expect(fake.seen.some((r) => r.query.startsWith('object-lock'))).to.equal(false);
      const got = await b.retain(['config'], new Date(Date.now() + 60_000));
      expect(got.immutable).to.equal(false);
      expect(got.note).to.match(/objectLock is off/);
    } finally {
      await b.close();
      await fake.stop();
    }
  });
});
