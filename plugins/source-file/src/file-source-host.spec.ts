import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, type JobContext } from '@ferry/core/plugin';
import { FileSourceHost } from './file-source-host.js';

describe('file source host', function () {
  let ds: string;
  const job: JobContext = {
    name: 'j',
    file: '/jobs/j.yaml',
    dir: '/jobs',
    where: (p) => ({ file: '/jobs/j.yaml', line: 7, column: 3, path: p.join('.') }),
  };
  before(() => {
    ds = mkdtempSync(path.join(os.tmpdir(), 'ferry-ds-'));
    writeFileSync(path.join(ds, 'a.raw'), Buffer.alloc(8192, 1));
    const qcow2Header = Buffer.alloc(512);
    qcow2Header.set([0x51, 0x46, 0x49, 0xfb]);
    qcow2Header.writeBigUInt64BE(10n * 1024n * 1024n, 24); // virtual size
    writeFileSync(path.join(ds, 'b.qcow2'), qcow2Header);
    writeFileSync(path.join(ds, 'c.disk'), qcow2Header);
    mkdirSync(path.join(ds, 'vm2'));
    writeFileSync(path.join(ds, 'vm2', 'disk1.img'), Buffer.alloc(4096));
    writeFileSync(path.join(ds, 'vm2', 'disk0.img'), Buffer.alloc(4096));
  });
  after(() => rmSync(ds, { recursive: true, force: true }));

  it('describes the listed disks with path, virtual size and the format their names declare', async function () {
    const host = new FileSourceHost({ datastore: ds }, job);
    const [vm] = await host.inventory([{ name: 'vm1', disks: ['a.raw', 'b.qcow2', 'c.disk'], options: {} }]);
    expect(vm.disks).to.deep.equal([
      { name: 'a.raw', path: path.join(ds, 'a.raw'), format: 'raw', size: 8192 },
      { name: 'b.qcow2', path: path.join(ds, 'b.qcow2'), format: 'qcow2', size: 10 * 1024 * 1024 },
      // no telling extension: the transport decides by the magic; the size is the virtual size
      { name: 'c.disk', path: path.join(ds, 'c.disk'), size: 10 * 1024 * 1024 },
    ]);
    expect(host.label).to.equal(`file:${ds}`);
  });

  it('without disks: takes every image in <datastore>/<vm>/, sorted', async function () {
    const [vm] = await new FileSourceHost({ datastore: ds }, job).inventory([{ name: 'vm2', options: {} }]);
    expect(vm.disks.map((d) => d.name)).to.deep.equal(['vm2/disk0.img', 'vm2/disk1.img']);
  });

  it('a missing disk is SOURCE_DISK_NOT_FOUND at its line in the job file', async function () {
    const err = await new FileSourceHost({ datastore: ds }, job)
      .inventory([{ name: 'vm1', disks: ['a.raw', 'nope.raw'], options: {} }])
      .catch((e: FerryError) => e);
    expect(err).to.be.instanceOf(FerryError);
    expect((err as FerryError).code).to.equal('SOURCE_DISK_NOT_FOUND');
    expect((err as FerryError).where).to.include({ path: 'source.vms.0.disks.1', line: 7, disk: 'nope.raw' });
  });

  it('a disk that resolves outside the datastore (a VM folder linked elsewhere) is JOB_INVALID at the VM', async function () {
    const outside = mkdtempSync(path.join(os.tmpdir(), 'ferry-outside-'));
    try {
      writeFileSync(path.join(outside, 'secret.img'), Buffer.alloc(4096));
      symlinkSync(outside, path.join(ds, 'vm3'));
      const err = await new FileSourceHost({ datastore: ds }, job).inventory([{ name: 'vm3', options: {} }]).catch((e: FerryError) => e);
      expect(err).to.be.instanceOf(FerryError);
      expect((err as FerryError).code).to.equal('JOB_INVALID');
      expect((err as FerryError).where).to.include({ path: 'source.vms.0.name', disk: 'vm3/secret.img' });
    } finally {
      rmSync(path.join(ds, 'vm3'), { force: true });
      rmSync(outside, { recursive: true, force: true });
    }
  });

  it('a VM without disks and without a folder is SOURCE_VM_NOT_FOUND', async function () {
    const err = await new FileSourceHost({ datastore: ds }, job).inventory([{ name: 'ghost', options: {} }]).catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('SOURCE_VM_NOT_FOUND');
  });
});
