import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core';
import { CERT_FILES, connect, listen, type Connection } from '@ferry/core/remote/wire';
import { json, runFerry, tempDir } from './support/helpers.js';

const digest = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

/** Listens as `listenRole` with `listenDir`, connects as `clientRole` with `clientDir`, echoes one message. */
async function handshake(listenDir: string, listenRole: 'repository' | 'proxy', clientDir: string, clientRole: 'server' | 'repository'): Promise<string> {
  const served: Connection[] = [];
  const l = await listen({
    listen: '127.0.0.1:0',
    auth: { kind: 'certs', dir: listenDir, role: listenRole },
    allow: { roles: [clientRole] },
    onConnection: (c) => {
      served.push(c);
      void (async () => {
        for await (const m of c) await c.send({ type: `${m.type}-back`, body: m.body });
      })().catch(() => undefined);
    },
  });
  try {
    const c = await connect({ address: `127.0.0.1:${l.port}`, auth: { kind: 'certs', dir: clientDir, role: clientRole }, expectRole: listenRole, timeoutMs: 5_000 });
    await c.send({ type: 'hello', body: Buffer.from('data') });
    const back = await c.receive();
    await c.close();
    expect(served[0].peer.role).to.equal(clientRole);
    return `${c.peer.role}:${back?.type}:${Buffer.from(back?.body ?? []).toString()}`;
  } finally {
    await l.close();
  }
}

describe('ferry certs init', function () {
  let tmp: ReturnType<typeof tempDir>;
  beforeEach(function () {
    tmp = tempDir('ferry-certs-');
  });
  afterEach(function () {
    tmp.cleanup();
  });

  it('writes a CA and a key + certificate per role, keys 0600, and they authenticate a real connection', async function () {
    const dir = path.join(tmp.dir, 'certs');
    const r = await runFerry(['certs', 'init', dir, '--json']);
    expect(r.code, r.stderr).to.equal(0);
    const out = json<{ dir: string; files: string[] }>(r);
    expect(out.files.map((f) => path.basename(f))).to.deep.equal([...CERT_FILES]);
    for (const f of CERT_FILES) {
      const mode = statSync(path.join(dir, f)).mode & 0o777;
      expect(mode, f).to.equal(f.endsWith('.key') ? 0o600 : 0o644);
    }
    expect(statSync(dir).mode & 0o077, 'folder not open to others').to.equal(0);
    expect(await handshake(dir, 'repository', dir, 'server')).to.equal('repository:hello-back:data');
    expect(await handshake(dir, 'proxy', dir, 'repository')).to.equal('proxy:hello-back:data');
  });

  it('refuses to overwrite without --force (files unchanged); --force makes a new CA the old certificates fail against', async function () {
    const dir = path.join(tmp.dir, 'certs');
    expect((await runFerry(['certs', 'init', dir])).code).to.equal(0);
    const before = CERT_FILES.map((f) => digest(path.join(dir, f)));

    const again = await runFerry(['certs', 'init', dir, '--json']);
    expect(again.code).to.equal(1);
    const err = json<{ error: { code: string; message: string } }>(again).error;
    expect(err.code).to.equal('CERTS_FAILED');
    expect(err.message).to.contain('--force').and.contain(dir);
    expect(CERT_FILES.map((f) => digest(path.join(dir, f)))).to.deep.equal(before);

    const old = path.join(tmp.dir, 'old');
    expect((await runFerry(['certs', 'init', old])).code).to.equal(0);
    const forced = await runFerry(['certs', 'init', old, '--force']);
    expect(forced.code, forced.stderr).to.equal(0);
    expect(forced.stdout).to.contain('mode 0600');
    // The first folder's certificates come from another CA than the re-initialised one.
    try {
      await handshake(old, 'repository', dir, 'server');
      expect.fail('a certificate of the replaced CA was accepted');
    } catch (e) {
      expect(e).to.be.instanceOf(FerryError);
      expect((e as FerryError).code).to.equal('PIPE_AUTH');
    }
  });

  it('`ferry certs` without a subcommand, and a bad --days, are CLI_USAGE (exit 2)', async function () {
    const bare = await runFerry(['certs']);
    expect(bare.code).to.equal(2);
    expect(bare.stderr).to.match(/CLI_USAGE: name a certs command: init/);
    const days = await runFerry(['certs', 'init', path.join(tmp.dir, 'x'), '--days', '0']);
    expect(days.code).to.equal(2);
    expect(days.stderr).to.contain('--days');
  });
});
