import { expect } from 'chai';
import type { PluginRegistrar } from '@ferry/core/plugin';
import { HotaddTransport } from './hotadd-transport.js';
import { register } from './index.js';

describe('register', () => {
  it('registers the hotadd transport with a description', () => {
    const calls: unknown[][] = [];
    const registrar = {
      pluginName: '@ferry/transport-hotadd',
      tokens: {},
      register: (...args: unknown[]) => calls.push(args),
    } as unknown as PluginRegistrar;
    register(registrar);
    expect(calls).to.have.length(1);
    const [kind, name, provider, options] = calls[0] as [string, string, { useValue: unknown }, { description: string }];
    expect([kind, name]).to.deep.equal(['transport', 'hotadd']);
    expect(provider.useValue).to.be.instanceOf(HotaddTransport);
    expect(options.description).to.be.a('string').and.not.equal('');
  });
});
