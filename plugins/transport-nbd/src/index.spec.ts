import { expect } from 'chai';
import type { PluginRegistrar } from '@ferry/core/plugin';
import { NbdTransport } from './nbd-transport.js';
import { NbdClient, register } from './index.js';

describe('register', () => {
  it('registers the nbd transport with a description and exports the client', () => {
    const calls: unknown[][] = [];
    const registrar = {
      pluginName: '@ferry/transport-nbd',
      tokens: {},
      register: (...args: unknown[]) => calls.push(args),
    } as unknown as PluginRegistrar;
    register(registrar);
    expect(calls).to.have.length(1);
    const [kind, name, provider, options] = calls[0] as [string, string, { useFactory: (c: unknown) => unknown }, { description: string; configSchema: unknown }];
    expect([kind, name]).to.deep.equal(['transport', 'nbd']);
    // built per job from its validated `transport:` options (Tokens.PluginConfig)
    expect(provider.useFactory({ resolve: () => ({ connections: 2 }) })).to.be.instanceOf(NbdTransport);
    expect(options.description).to.be.a('string').and.not.equal('');
    expect(options.configSchema).to.be.an('object');
    expect(NbdClient.connect).to.be.a('function');
  });
});
