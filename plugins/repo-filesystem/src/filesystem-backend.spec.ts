import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { runRepositoryConformance } from '@ferry/core/testing';
import { FilesystemBackend, TMP_DIR } from './filesystem-backend.js';

runRepositoryConformance('filesystem', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-fsrepo-'));
  return { backend: new FilesystemBackend(dir), cleanup: () => rm(dir, { recursive: true, force: true }) };
});

describe('filesystem backend specifics', function () {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'ferry-fsrepo-'));
  });
  afterEach(() => rm(dir, { recursive: true, force: true }));

  it('leaves no temporary file behind after a put, and never lists tmp/', async function () {
    const b = new FilesystemBackend(dir);
    await b.put('a/b', Buffer.from('x'));
    expect(await readdir(path.join(dir, TMP_DIR))).to.deep.equal([]);
    await writeFile(path.join(dir, TMP_DIR, 'stray'), 'half-written');
    const keys: string[] = [];
    for await (const k of b.list('')) keys.push(k);
    expect(keys).to.deep.equal(['a/b']);
  });

  it('removes temporary files older than asked, and keeps younger ones', async function () {
    const b = new FilesystemBackend(dir);
    await b.put('a/b', Buffer.from('x'));
    const old = path.join(dir, TMP_DIR, 'old');
    await writeFile(old, 'stale');
    await utimes(old, new Date(Date.now() - 3_600_000), new Date(Date.now() - 3_600_000));
    await writeFile(path.join(dir, TMP_DIR, 'young'), 'in flight');
    expect(await b.removeStaleTemporaries(60_000)).to.equal(1);
    expect(await readdir(path.join(dir, TMP_DIR))).to.deep.equal(['young']);
  });

  it('names the local file of a key (a restore reads pack ranges there), and refuses an escaping key', async function () {
    const b = new FilesystemBackend(dir);
    await b.putIfAbsent('packs/ab/pack1', Buffer.from('pack bytes'));
    expect(await readFile(b.localFile('packs/ab/pack1'), 'utf8')).to.equal('pack bytes');
    expect(() => b.localFile('../x')).to.throw(FerryError);
  });

  it('refuses keys that would escape the repository', async function () {
    const b = new FilesystemBackend(dir);
    for (const key of ['../x', 'a/../../x', '/abs', 'a//b']) {
      await b.put(key, Buffer.from('x')).then(
        () => expect.fail(`accepted ${key}`),
        (err: FerryError) => expect(err.code).to.equal('INTERNAL'),
      );
    }
  });

  it('a write that fails is REPO_IO naming the key and leaves the old object', async function () {
    const b = new FilesystemBackend(dir);
    await b.put('points/p.json', Buffer.from('old'));
    // A folder where the object's file must go makes the rename fail (as root too, unlike chmod).
    await mkdir(path.join(dir, 'points', 'q.json'), { recursive: true });
    await writeFile(path.join(dir, 'points', 'q.json', 'keep'), 'x');
    await b.put('points/q.json', Buffer.from('new')).then(
      () => expect.fail('write succeeded'),
      (err: FerryError) => {
        expect(err.code).to.equal('REPO_IO');
        expect(err.message).to.include('points/q.json').and.include(dir);
      },
    );
    expect(Buffer.from(await b.get('points/p.json')).toString()).to.equal('old');
    expect(await readdir(path.join(dir, TMP_DIR))).to.deep.equal([]);
  });

  it('protect makes objects read-only and, where the filesystem and privileges allow, immutable; unprotect lifts it', async function () {
    const b = new FilesystemBackend(dir);
    await b.put('points/vm/p.json', Buffer.from('m'));
    const file = path.join(dir, 'points', 'vm', 'p.json');
    const got = await b.protect(['points/vm/p.json']);
    expect(got.readOnly).to.equal(true);
    expect((await stat(file)).mode & 0o777).to.equal(0o444);
    if (got.immutable) {
      // The attribute stops root as well: neither a delete nor a replace gets through.
      await b.delete('points/vm/p.json').then(
        () => expect.fail('delete succeeded'),
        (err: FerryError) => expect(err.code).to.equal('REPO_IO'),
      );
      await b.put('points/vm/p.json', Buffer.from('x')).then(
        () => expect.fail('replace succeeded'),
        (err: FerryError) => expect(err.code).to.equal('REPO_IO'),
      );
    } else {
      expect(got.note).to.be.a('string').and.match(/immutable attribute/);
    }
    await b.unprotect(['points/vm/p.json']);
    expect((await stat(file)).mode & 0o777).to.equal(0o644);
    await b.delete('points/vm/p.json');
    expect(await b.has('points/vm/p.json')).to.equal(false);
  });

  it('retain keeps a key until its date: delete is REPO_IMMUTABLE before it, a date is never shortened', async function () {
    const b = new FilesystemBackend(dir);
    await b.put('packs/ab/abc', Buffer.from('pack'));
    const until = new Date(Date.now() + 86_400_000);
    const got = await b.retain(['packs/ab/abc'], until);
    expect(got.readOnly).to.equal(true);
    expect((await b.retainedUntil('packs/ab/abc'))?.toISOString()).to.equal(until.toISOString());
    await b.retain(['packs/ab/abc'], new Date(Date.now() + 1000)); // earlier: no change
    expect((await b.retainedUntil('packs/ab/abc'))?.toISOString()).to.equal(until.toISOString());
    const later = new Date(until.getTime() + 86_400_000);
    await b.retain(['packs/ab/abc'], later);
    expect((await b.retainedUntil('packs/ab/abc'))?.toISOString()).to.equal(later.toISOString());
    await b.delete('packs/ab/abc').then(
      () => expect.fail('delete succeeded'),
      (err: FerryError) => {
        expect(err.code).to.equal('REPO_IMMUTABLE');
        expect(err.message).to.include(later.toISOString());
      },
    );
    expect(await b.has('packs/ab/abc')).to.equal(true);
    // The date passes (written directly: no waiting a day): delete lifts the protection and removes
    // the object and its record.
    await writeFile(path.join(dir, 'mutable', 'retention', 'packs', 'ab', 'abc'), new Date(Date.now() - 1000).toISOString());
    await b.delete('packs/ab/abc');
    expect(await b.has('packs/ab/abc')).to.equal(false);
    expect(await b.retainedUntil('packs/ab/abc')).to.equal(undefined);
  });
});
