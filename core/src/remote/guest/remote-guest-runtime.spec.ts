import { expect } from 'chai';
import type { GuestOptions } from '../../contracts/guest-runtime.js';
import { FerryError } from '../../errors.js';
import { RemoteGuestRuntime } from './remote-guest-runtime.js';

describe('guest proxy runtime and a source host agent channel', () => {
  it("refuses a source host's agent channel before reaching any proxy (it lives in this process)", async () => {
    const options: GuestOptions = {
      os: 'linux',
      via: 'qga',
      agent: { label: 'qga libvirt:qemu:///system domain web1', execute: () => Promise.resolve({}) },
      credentials: {},
      freeze: 'auto',
      scripts: {},
      applications: [],
      timeoutSeconds: 5,
    };
    // nothing listens there: a connection attempt would fail with another code
    const err = await new RemoteGuestRuntime(['127.0.0.1:1'], '/nonexistent-certs').connect('web1', options).then(
      () => undefined,
      (e: unknown) => e as FerryError,
    );
    expect(err).to.be.instanceOf(FerryError);
    expect(err!.code).to.equal('JOB_INVALID');
    expect(err!.detail).to.include('domain web1').and.to.include('guest proxy');
    expect(err!.where).to.include({ vm: 'web1' });
  });
});
