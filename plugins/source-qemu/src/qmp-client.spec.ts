import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError } from '@ferry/core/plugin';
import { skipUnlessTools } from '@ferry/core/testing';
import { QmpClient, QmpCommandError } from './qmp-client.js';
import { StorageDaemon, TOOLS } from './testing/storage-daemon.js';

describe('QMP client', function () {
  this.timeout(20_000);
  let qsd: StorageDaemon | undefined;
  let qmp: QmpClient | undefined;

  before(async function () {
    skipUnlessTools(this, TOOLS);
    qsd = await StorageDaemon.start();
  });
  afterEach(async () => {
    await qmp?.close();
    qmp = undefined;
  });
  after(async () => qsd?.stop());

  it('reads the greeting, negotiates capabilities and runs a command', async function () {
    qmp = await QmpClient.connect(qsd!.qmp);
    expect(qmp.version?.major).to.be.a('number');
    const nodes = await qmp.execute<{ 'node-name': string }[]>('query-named-block-nodes', { flat: true });
    expect(nodes.map((n) => n['node-name'])).to.include('disk0');
    expect(qmp.label).to.equal(`qemu:unix:${qsd!.qmpPath}`);
  });

  it('matches concurrent answers to their commands by id', async function () {
    qmp = await QmpClient.connect(qsd!.qmp);
    const [a, b, c] = await Promise.all([
      qmp.execute<unknown[]>('query-block-exports'),
      qmp.execute<{ qemu: { major: number } }>('query-version'),
      qmp.execute<{ name: string }[]>('query-commands'),
    ]);
    expect(a).to.be.an('array');
    expect(b.qemu.major).to.equal(qmp.version?.major);
    expect(c.map((x) => x.name)).to.include('blockdev-backup');
  });

  it('reports a refused command with its QMP class, description and command name', async function () {
    qmp = await QmpClient.connect(qsd!.qmp);
    const err = await qmp.execute('block-dirty-bitmap-add', { node: 'nope', name: 'x' }).catch((e: unknown) => e);
    expect(err).to.be.instanceOf(QmpCommandError);
    const e = err as QmpCommandError;
    expect(e.command).to.equal('block-dirty-bitmap-add');
    expect(e.errorClass).to.equal('GenericError');
    expect(e.description).to.match(/nope/);
    expect(e.message).to.include('block-dirty-bitmap-add').and.include('GenericError');
    const unknown = (await qmp.execute('no-such-command').catch((x: unknown) => x)) as QmpCommandError;
    expect(unknown.errorClass).to.equal('CommandNotFound');
  });

  it('delivers events, also those that arrived before the command answered', async function () {
    qmp = await QmpClient.connect(qsd!.qmp);
    const seen: string[] = [];
    qmp.on('event', (e: { event: string }) => seen.push(e.event));
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: path.join(qsd!.dir, 'ev.sock') } } });
    await qmp.execute('block-export-add', { type: 'nbd', id: 'ev', 'node-name': 'disk0', name: 'ev' });
    const mark = qmp.eventMark();
    await qmp.execute('block-export-del', { id: 'ev' });
    const ev = await qmp.waitForEvent('BLOCK_EXPORT_DELETED', (d) => d.id === 'ev', 5000, mark);
    expect(ev.data).to.deep.equal({ id: 'ev' });
    expect(seen).to.include('BLOCK_EXPORT_DELETED');
    await qmp.execute('nbd-server-stop');
  });

  it('times out waiting for an event that never comes, as SOURCE_UNREACHABLE', async function () {
    qmp = await QmpClient.connect(qsd!.qmp);
    const err = (await qmp.waitForEvent('NEVER', () => true, 100).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('SOURCE_UNREACHABLE');
    expect(err.message).to.include('NEVER');
  });

  it('a refused connection is SOURCE_UNREACHABLE naming the address', async function () {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-qmp-'));
    try {
      const missing = `unix:${path.join(dir, 'none.sock')}`;
      const err = (await QmpClient.connect(missing).catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.include(path.join(dir, 'none.sock'));
      const port = await freePort();
      const tcp = (await QmpClient.connect(`tcp:127.0.0.1:${port}`).catch((e: unknown) => e)) as FerryError;
      expect(tcp.code).to.equal('SOURCE_UNREACHABLE');
      expect(tcp.message).to.include(`tcp:127.0.0.1:${port}`).and.include('ECONNREFUSED');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a server that never greets is SOURCE_UNREACHABLE after the connect timeout', async function () {
    const server = net.createServer(() => undefined);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const err = (await QmpClient.connect(`tcp:127.0.0.1:${port}`, { connectTimeoutMs: 200 }).catch((e: unknown) => e)) as FerryError;
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.include('greeting');
    } finally {
      server.close();
    }
  });

  it('fails pending commands when the monitor goes away, and closes cleanly', async function () {
    const server = net.createServer((s) => {
      s.write('{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}\r\n');
      s.on('data', (d) => {
        const msg = JSON.parse(d.toString().trim()) as { execute: string; id: string };
        if (msg.execute === 'qmp_capabilities') s.write(`{"return": {}, "id": "${msg.id}"}\r\n`);
        else s.destroy();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.address() as net.AddressInfo).port;
      const client = await QmpClient.connect(`tcp:127.0.0.1:${port}`);
      const err = (await client.execute('query-status').catch((e: unknown) => e)) as FerryError;
      expect(err.code).to.equal('SOURCE_UNREACHABLE');
      expect(err.message).to.include('query-status');
      await client.close();
      await client.close();
    } finally {
      server.close();
    }
  });
});

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}
