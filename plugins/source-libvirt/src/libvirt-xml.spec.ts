import { expect } from 'chai';
import { backupXml, checkpointXml, parseBackupJob, parseCheckpoint, parseDomain, unusableReason } from './libvirt-xml.js';

const DOMAIN = `<domain type='qemu' id='3'>
  <name>web&amp;1</name>
  <uuid>6c4d1b0e-3a8f-4c52-9a61-0d1e2f3a4b5c</uuid>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/img/a b.qcow2' index='1'/><backingStore/><target dev='vda' bus='virtio'/></disk>
    <disk type='block' device='disk'><driver name='qemu' type='raw'/><source dev='/dev/vg/b'/><target dev='vdb' bus='virtio'/><shareable/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><source protocol='rbd' name='pool/img'/><target dev='vdc' bus='virtio'/></disk>
    <channel type='unix'><source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0'/><target type='virtio' name='org.qemu.guest_agent.0' state='connected'/></channel>
  </devices>
</domain>`;

describe('libvirt XML', () => {
  it('reads a domain: disks by target, sources, formats, flags, and the agent channel', () => {
    const d = parseDomain(DOMAIN);
    expect(d.name).to.equal('web&1');
    expect(d.uuid).to.equal('6c4d1b0e-3a8f-4c52-9a61-0d1e2f3a4b5c');
    expect(d.disks.map((x) => [x.dev, x.type, x.path, x.format])).to.deep.equal([
      ['vda', 'file', '/img/a b.qcow2', 'qcow2'],
      ['vdb', 'block', '/dev/vg/b', 'raw'],
      ['sda', 'file', undefined, 'raw'],
      ['vdc', 'network', undefined, 'raw'],
    ]);
    expect(d.disks.map(unusableReason)).to.deep.equal([undefined, 'it is shared with other domains, so no snapshot of it is consistent', 'it is a cdrom, not a disk', undefined]);
    expect(d.agent).to.deep.equal({ type: 'unix', path: '/var/lib/libvirt/qemu/channel/target/domain-3-web1/org.qemu.guest_agent.0', state: 'connected' });
  });

  it('reads one disk as a list too, and refuses what is not a domain', () => {
    const one = parseDomain(`<domain><name>a</name><uuid>u</uuid><devices><disk type='file' device='disk'><target dev='vda'/></disk></devices></domain>`);
    expect(one.disks).to.have.length(1);
    expect(() => parseDomain('<domainbackup/>')).to.throw(/no <domain>/);
    expect(() => parseDomain('<domain><name>a</name></domain>')).to.throw(/no <name> or <uuid>/);
  });

  it('reads checkpoints and backup jobs as libvirt 9 writes them', () => {
    const cp = parseCheckpoint(`<domaincheckpoint><name>c2</name><parent><name>c1</name></parent><disks><disk name='vda' checkpoint='bitmap' bitmap='c2'/><disk name='sda' checkpoint='no'/></disks></domaincheckpoint>`);
    expect(cp.name).to.equal('c2');
    expect(cp.parent).to.equal('c1');
    expect([...cp.bitmaps]).to.deep.equal(['vda']);
    const job = parseBackupJob(`<domainbackup mode='pull'><server transport='unix' socket='/s.sock'/><disks><disk name='vda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='vda' exportbitmap='backup-vda' index='3'><scratch file='/x'/></disk><disk name='sda' backup='no'/></disks></domainbackup>`);
    expect(job).to.deep.equal({ socket: '/s.sock', disks: [{ dev: 'vda', scratch: '/x', exportName: 'vda', exportBitmap: 'backup-vda', mode: 'incremental', incremental: 'c1' }] });
  });

  it('writes backup and checkpoint definitions that read back, escaping names', () => {
    const b = parseBackupJob(backupXml({ socket: "/tmp/a'b.sock" }, [{ dev: 'vda', scratch: '/tmp/s', incremental: 'ferry.j.1' }, { dev: 'vdb', scratch: '/tmp/t' }, { dev: 'sda' }]));
    expect(b.socket).to.equal("/tmp/a'b.sock");
    expect(b.disks).to.deep.equal([
      { dev: 'vda', scratch: '/tmp/s', mode: 'incremental', incremental: 'ferry.j.1' },
      { dev: 'vdb', scratch: '/tmp/t', mode: 'full' },
    ]);
    const tcp = parseBackupJob(backupXml({ host: '::1', port: 10810, tls: true }, [{ dev: 'vda', scratch: '/s' }]));
    expect(tcp.tcp).to.equal('::1:10810');
    const c = parseCheckpoint(checkpointXml('ferry.j.<1>', 'job & session', ['vda', 'vdb'], new Set(['vdb'])));
    expect(c.name).to.equal('ferry.j.<1>');
    expect([...c.bitmaps]).to.deep.equal(['vdb']);
  });
});
