import { expect } from 'chai';
import type { PluginRegistrar } from '@ferry/core';
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
    const [kind, name, provider, options] = calls[0] as [string, string, { useValue: unknown }, { description: string }];
    expect([kind, name]).to.deep.equal(['transport', 'nbd']);
    expect(provider.useValue).to.be.instanceOf(NbdTransport);
    expect(options.description).to.be.a('string').and.not.equal('');
    expect(NbdClient.connect).to.be.a('function');
  });
});
