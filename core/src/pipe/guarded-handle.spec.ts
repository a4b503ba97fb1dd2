import { expect } from 'chai';
import type { DiskHandle } from '../contracts/transport.js';
import { FerryError } from '../errors.js';
import { guardHandle } from './guarded-handle.js';

describe('guardHandle', function () {
  const handle = (extra: Partial<DiskHandle> = {}): DiskHandle => ({
    size: 4096,
    read: async () => {
      throw new Error('disk gone');
    },
    close: async () => undefined,
    ...extra,
  });

  it("keeps a handle's descriptor, so the block threads can read it (DiskHandle.fd)", function () {
    expect(guardHandle(handle({ fd: 7 }), 'p', { vm: 'v', disk: 'd' }).fd).to.equal(7);
    expect('fd' in guardHandle(handle(), 'p', { vm: 'v', disk: 'd' })).to.equal(false);
  });

  it('stamps plugin, hook, VM, disk and offset on what a read throws', async function () {
    const err = await guardHandle(handle(), 'p', { vm: 'v', disk: 'd' })
      .read(512, 10)
      .then(
        () => undefined,
        (e: unknown) => e,
      );
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('TRANSPORT_READ_FAILED');
    expect((err as FerryError).where).to.include({ plugin: 'p', hook: 'read', vm: 'v', disk: 'd', offset: 512 });
  });
});
