import { expect } from 'chai';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FerryError } from '../../errors.js';
import { proxyPluginOptions } from './proxy-options.js';

const HERE = fileURLToPath(import.meta.url);
const of = { path: 'filters[1]', what: 'block-filter "marker"', plugin: 'ferry-marker-filter' };
const schema = {
  type: 'object',
  required: ['marker'],
  properties: {
    marker: { type: 'string', minLength: 4 },
    tls: { type: 'object', properties: { ca: { type: 'string', ferryPath: 'file' } } },
  },
};

function refusal(fn: () => unknown): FerryError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(FerryError);
    return err as FerryError;
  }
  throw new Error('the options were accepted');
}

/** Options checked on the proxy against its own plugin's configSchema (`proxyPluginOptions`). */
describe('proxy: plugin options checked against its own plugin', function () {
  it('accepts what the schema allows and hands back a copy', function () {
    const given = { marker: 'SCRATCH-7' };
    const got = proxyPluginOptions(schema, given, of);
    expect(got).to.deep.equal(given);
    expect(got).to.not.equal(given);
    expect(proxyPluginOptions(undefined, undefined, of)).to.deep.equal({});
  });

  for (const [name, given, key, message] of [
    ['an unknown key', { marker: 'SCRATCH-7', at: 16 }, 'filters[1].at', 'unknown key; its version here allows: marker, tls'],
    ['a missing key', {}, 'filters[1].marker', 'missing key'],
    ['a value of the wrong type', { marker: 'AB' }, 'filters[1].marker', 'must NOT have fewer than 4 characters'],
    ['a path missing on the proxy host', { marker: 'SCRATCH-7', tls: { ca: '/nonexistent/ca.pem' } }, 'filters[1].tls.ca', 'file not found on the proxy host'],
  ] as const) {
    it(`refuses ${name} with REMOTE_PLUGIN_OPTIONS naming plugin and key`, function () {
      const err = refusal(() => proxyPluginOptions(schema, given, of, { vm: 'vm1', disk: 'd' }));
      expect(err.code).to.equal('REMOTE_PLUGIN_OPTIONS');
      expect(err.where).to.deep.equal({ vm: 'vm1', disk: 'd', plugin: 'ferry-marker-filter', path: key });
      expect(err.detail).to.contain("this proxy's ferry-marker-filter").and.contain(message);
    });
  }

  it('keeps a path that exists here, absolute', function () {
    const got = proxyPluginOptions(schema, { marker: 'SCRATCH-7', tls: { ca: HERE } }, of);
    expect((got.tls as { ca: string }).ca).to.equal(path.resolve(HERE));
  });

  it('refuses options for a plugin whose version here declares no configSchema', function () {
    const err = refusal(() => proxyPluginOptions(undefined, { marker: 'SCRATCH-7' }, of));
    expect(err.code).to.equal('REMOTE_PLUGIN_OPTIONS');
    expect(err.where.path).to.equal('filters[1].marker');
  });
});
