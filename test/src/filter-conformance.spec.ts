import path from 'node:path';
import { expect } from 'chai';
import type { FerryError } from '@ferry/core/plugin';
import { loadPluginForTest, runBlockFilterConformance } from '@ferry/core/testing';
import { ROOT } from './support/helpers.js';

const FIXTURES = path.join(ROOT, 'test', 'fixtures');
const marked = (marker: string, at = 0): Buffer => {
  const b = Buffer.alloc(64 * 1024, 0x5a);
  b.write(marker, at, 'ascii');
  return b;
};

// The fixture filters, loaded through the real plugin host as a job's `plugins:` folder would be.
runBlockFilterConformance('scratch-marker (example-filter fixture)', () => loadPluginForTest(path.join(FIXTURES, 'plugins', 'example-filter'), 'block-filter', 'scratch-marker'), {
  drops: [marked('FERRY-SCRATCH')],
});
runBlockFilterConformance('marker (third-party fixture, with options)', () => loadPluginForTest(path.join(FIXTURES, 'third-party', 'ferry-marker-filter'), 'block-filter', 'marker', { marker: 'SCRATCH-7', at: 16 }), {
  drops: [marked('SCRATCH-7', 16)],
});

describe('loadPluginForTest', function () {
  it('refuses options the configSchema does not allow, naming the key', async function () {
    const err = (await loadPluginForTest(path.join(FIXTURES, 'third-party', 'ferry-marker-filter'), 'block-filter', 'marker', { marker: 'SCRATCH-7', at: -1 }).catch(
      (e: unknown) => e,
    )) as FerryError;
    expect(err.code).to.equal('JOB_INVALID');
    expect(err.where.path).to.equal('options.at');
  });

  it('gives the filter guarded, as a session does: a wrong verdict is PLUGIN_CONTRACT naming the plugin', async function () {
    const f = await loadPluginForTest(path.join(FIXTURES, 'plugins', 'faulty-filter'), 'block-filter', 'bad-verdict');
    expect(f.classify!(Buffer.alloc(16), 0)).to.equal('keep');
    expect(() => f.classify!(Buffer.alloc(16), 512 * 1024))
      .to.throw()
      .with.property('code', 'PLUGIN_CONTRACT');
  });

  it('names what the folder provides when asked for something else', async function () {
    const err = (await loadPluginForTest(path.join(FIXTURES, 'plugins', 'example-filter'), 'block-filter', 'nope').catch((e: unknown) => e)) as FerryError;
    expect(err.code).to.equal('PLUGIN_NOT_FOUND');
    expect(err.message).to.include('scratch-marker');
  });
});
