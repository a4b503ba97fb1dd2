import { expect } from 'chai';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Compressor } from '../contracts/compressor.js';
import { FerryError } from '../errors.js';
import { createPluginHost } from '../session/job-runtime.js';
import { WorkerBlockCodec, workerPlugins } from './worker-block-codec.js';
import { leanCompressors, type CompressorPlugin } from './worker-compressors.js';

/** A plugin entry module in `dir` whose `register` body is `body` (it gets `r`, the registrar). */
function pluginEntry(dir: string, name: string, body: string): string {
  const file = path.join(dir, `${name}.mjs`);
  writeFileSync(file, `export function register(r) {\n${body}\n}\n`);
  return pathToFileURL(file).href;
}

const VALUE_COMPRESSOR = `{ compress: (d) => d.subarray(0, 1), decompress: (d, n) => new Uint8Array(n) }`;

describe('leanCompressors: block workers build compressors without the plugin host', function () {
  let dir: string;
  const fromHost: string[] = [];
  const host = async (name: string): Promise<Compressor> => {
    fromHost.push(name);
    throw new FerryError('PLUGIN_NOT_FOUND', `host: ${name}`);
  };
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-lean-'));
    fromHost.length = 0;
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('builds the built-in compressors and a value a listed package registers, guarded as the host does', async function () {
    const entry = pluginEntry(dir, 'ok', `r.register('compressor', 'one', { useValue: { compress() { throw new Error('boom'); }, decompress: (d) => d } });`);
    const get = leanCompressors([{ plugin: 'p-ok', entry, declares: ['compressor:one'] }], host);
    const rle = await get('rle');
    expect(rle.decompress(rle.compress(Buffer.alloc(100, 7), 0), 100)).to.deep.equal(new Uint8Array(100).fill(7));
    const one = await get('one');
    // guardPlugin: what the compressor throws names the plugin and hook.
    expect(() => one.compress(Buffer.alloc(4), 0))
      .to.throw(FerryError)
      .with.property('where')
      .that.includes({ plugin: 'p-ok', hook: 'compress' });
    expect(fromHost).to.deep.equal([]);
  });

  it('leaves to the plugin host what it cannot build the same way', async function () {
    const plugins: CompressorPlugin[] = [
      { plugin: 'p-class', entry: pluginEntry(dir, 'class', `r.register('compressor', 'cls', { useClass: class { compress(d) { return d; } decompress(d) { return d; } } });`), declares: ['compressor:cls'] },
      { plugin: 'p-undeclared', entry: pluginEntry(dir, 'undeclared', `r.register('compressor', 'u', { useValue: ${VALUE_COMPRESSOR} }); r.register('compressor', 'extra', { useValue: ${VALUE_COMPRESSOR} });`), declares: ['compressor:u'] },
      { plugin: 'p-builtin', entry: pluginEntry(dir, 'builtin', `r.register('compressor', 'b', { useValue: ${VALUE_COMPRESSOR} }); r.register('compressor', 'none', { useValue: ${VALUE_COMPRESSOR} });`), declares: ['compressor:b', 'compressor:none'] },
      { plugin: 'p-members', entry: pluginEntry(dir, 'members', `r.register('compressor', 'm', { useValue: { compress: (d) => d } });`), declares: ['compressor:m'] },
      { plugin: 'p-throws', entry: pluginEntry(dir, 'throws', `throw new Error('no');`), declares: ['compressor:t'] },
      { plugin: 'p-missing', entry: pathToFileURL(path.join(dir, 'missing.mjs')).href, declares: ['compressor:x'] },
    ];
    const get = leanCompressors(plugins, host);
    for (const name of ['cls', 'u', 'b', 'm', 't', 'x', 'nosuch']) {
      await get(name).then(
        () => expect.fail(`${name} was built`),
        (err: FerryError) => expect(err.detail).to.equal(`host: ${name}`),
      );
    }
    expect(fromHost).to.deep.equal(['cls', 'u', 'b', 'm', 't', 'x', 'nosuch']);
  });

  it('lists the packages that provide compressors for the workers, which encode with them', async function () {
    const plugins = await createPluginHost();
    const listed = workerPlugins(plugins).compressorPlugins!;
    expect(listed.some((p) => p.declares.includes('compressor:lz4'))).to.equal(true);
    const codec = new WorkerBlockCodec(workerPlugins(plugins), 1);
    try {
      const block = Buffer.alloc(64 * 1024, 'ferry ');
      const r = await codec.encode(Buffer.from(block), 'lz4', 0);
      expect(r.encoded.length).to.be.lessThan(block.length / 4);
      expect(await codec.decode(r.encoded, r.hash, 'b')).to.deep.equal(block);
    } finally {
      await codec.close();
    }
  });
});
