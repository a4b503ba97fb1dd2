import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { PluginKind } from '../contracts/plugin.js';
import { FerryError } from '../errors.js';
import { PluginHost } from './plugin-host.js';

/** A plugin package in `dir` providing `kind` `name` as the object literal `instance` (JavaScript). */
function writePlugin(dir: string, kind: PluginKind, name: string, instance: string): void {
  const pkg = path.join(dir, `p-${kind}-${name}`);
  mkdirSync(pkg, { recursive: true });
  const ferry = { apiVersion: '1.0', entry: './index.js', provides: { [kind]: [name] } };
  writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name: `p-${kind}-${name}`, version: '1.0.0', type: 'module', ferry }));
  writeFileSync(path.join(pkg, 'index.js'), `export function register(r) { r.register('${kind}', '${name}', { useFactory: () => (${instance}) }); }\n`);
}

const fn = 'async () => {}';

describe('plugin host: required members', function () {
  let dir: string;
  let host: PluginHost;
  before(async function () {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-members-'));
    writePlugin(dir, 'transport', 'no-open', `{ probe: ${fn} }`);
    writePlugin(dir, 'transport', 'bad-handle', `{ open: async () => ({ size: 4096, close: ${fn} }) }`);
    writePlugin(dir, 'transport', 'fine', `{ open: async () => ({ size: 4096, read: async (o, n) => new Uint8Array(n), close: ${fn} }) }`);
    writePlugin(dir, 'source-host', 'no-label', `{ inventory: ${fn} }`);
    writePlugin(dir, 'block-filter', 'no-hooks', '{}');
    writePlugin(dir, 'compressor', 'half', '{ compress: (d) => d }');
    writePlugin(dir, 'repository-backend', 'old', `{ location: 'x', get: ${fn}, put: ${fn}, has: ${fn}, list: ${fn}, delete: ${fn} }`);
    writePlugin(dir, 'guest-runtime', 'nothing', 'undefined');
    writePlugin(dir, 'guest-runtime', 'no-thaw', `{ connect: async () => { globalThis.noThawClosed = false; return { label: 'x', freeze: ${fn}, close: async () => { globalThis.noThawClosed = true; } }; } }`);
    host = await PluginHost.create({ installRoot: path.join(dir, 'nowhere'), envPath: dir }, () => undefined);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const cases: [PluginKind, string, string][] = [
    ['transport', 'no-open', 'open()'],
    ['source-host', 'no-label', 'label'],
    ['block-filter', 'no-hooks', 'skipExtents() or classify()'],
    ['compressor', 'half', 'decompress()'],
    ['repository-backend', 'old', 'putIfAbsent()'],
  ];
  for (const [kind, name, member] of cases) {
    it(`refuses a ${kind} without ${member}, naming plugin, kind, name and member`, async function () {
      const err = (await host.create(kind, name, host.container).catch((e: unknown) => e)) as FerryError;
      expect(err).to.be.instanceOf(FerryError);
      expect(err.code).to.equal('PLUGIN_CONTRACT');
      expect(err.where).to.include({ plugin: `p-${kind}-${name}`, hook: `create ${kind} ${name}` });
      expect(err.detail).to.include(`${kind} "${name}" has no ${member}`);
    });
  }

  it('refuses a factory that builds no object', async function () {
    const err = (await host.create('guest-runtime', 'nothing', host.container).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('PLUGIN_CONTRACT');
    expect(err.detail).to.include('guest-runtime "nothing"');
  });

  it("refuses a disk handle without read when the transport opens it, naming the disk", async function () {
    const t = await host.create('transport', 'bad-handle', host.container);
    const err = (await t.open({ name: 'vda' }).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('PLUGIN_CONTRACT');
    expect(err.where).to.include({ plugin: 'p-transport-bad-handle', hook: 'open', disk: 'vda' });
    expect(err.detail).to.include('without read()');
  });

  it('refuses a guest session without thaw when the runtime connects, closing it, naming the VM', async function () {
    const g = await host.create('guest-runtime', 'no-thaw', host.container);
    const options = { os: 'no-thaw', via: 'ssh', credentials: {}, freeze: 'auto' as const, scripts: {}, applications: [], timeoutSeconds: 5 };
    const err = (await g.connect('vm1', options).catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('PLUGIN_CONTRACT');
    expect(err.where).to.include({ plugin: 'p-guest-runtime-no-thaw', hook: 'connect', vm: 'vm1' });
    expect(err.detail).to.include('without thaw()');
    expect((globalThis as { noThawClosed?: boolean }).noThawClosed).to.equal(true);
  });

  it('passes a complete transport through, optional members absent', async function () {
    const t = await host.create('transport', 'fine', host.container);
    expect(t.probe).to.equal(undefined);
    const h = await t.open({ name: 'vda' });
    expect(h.size).to.equal(4096);
    expect(await h.read(0, 8)).to.have.length(8);
  });
});

describe('plugin host: providers of a kind', function () {
  it('names the same packages as `available`, registered and discovered alike', async function () {
    const { createPluginHost } = await import('./create-plugin-host.js');
    const host = await createPluginHost();
    for (const kind of ['compressor', 'transport', 'block-filter', 'source-host'] as PluginKind[]) {
      expect([...host.providers(kind)].sort(), kind).to.deep.equal([...new Set(host.available(kind).map((a) => a.plugin))].sort());
    }
    expect(host.providers('compressor').has('@ferry/core')).to.equal(true);
  });
});
