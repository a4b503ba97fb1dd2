import { expect } from 'chai';
import { redefine } from './domain-definition.js';
import { parseDomain } from './libvirt-xml.js';

const SAVED = `<domain type='qemu'>
  <name>web1</name>
  <uuid>6c4d1b0e-3a8f-4c52-9a61-0d1e2f3a4b5c</uuid>
  <memory unit='KiB'>65536</memory>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none'/>
      <source dev='/dev/vg/web1'/>
      <backingStore type='file'><format type='qcow2'/><source file='/base.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='network' device='disk'><driver name='qemu' type='raw'/><auth username='admin'><secret type='ceph' uuid='2ec115d7-3a88-3ceb-bc12-0ac909a6fd87'/></auth><source protocol='rbd' name='pool/img'><host name='mon1' port='6789'/></source><target dev='vdc' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/x.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='/img/shared.raw'/><target dev='vdb' bus='virtio'/><shareable/></disk>
    <interface type='network'><mac address='52:54:00:aa:bb:cc'/><source network='default'/><model type='virtio'/></interface>
    <channel type='unix'><source mode='bind' path='/run/web1.agent'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
  </devices>
</domain>
`;

describe('libvirt domain definition for restore --define', () => {
  it('renames, drops UUID and MACs, points restored disks at their files and keeps the rest', () => {
    const { xml, notes } = redefine(SAVED, {
      name: 'web1-copy',
      disks: [
        { name: 'vda', path: '/restore/web1-copy-vda.raw', format: 'raw' },
        { name: 'vdc', path: '/restore/web1-copy-vdc.raw', format: 'raw' },
      ],
    });
    const d = parseDomain(xml.replace('<name>web1-copy</name>', '<name>web1-copy</name><uuid>x</uuid>'));
    expect(d.name).to.equal('web1-copy');
    expect(xml).to.not.include('6c4d1b0e');
    expect(xml).to.not.include('52:54:00:aa:bb:cc');
    expect(xml).to.not.include('backingStore');
    expect(xml).to.not.include('/run/web1.agent');
    expect(xml).to.not.include('ceph').and.not.include('mon1');
    expect(xml).to.include("cache=\"none\"");
    expect(d.disks.map((x) => [x.dev, x.type, x.path, x.format])).to.deep.equal([
      ['vda', 'file', '/restore/web1-copy-vda.raw', 'raw'],
      ['vdc', 'file', '/restore/web1-copy-vdc.raw', 'raw'],
      ['sda', 'file', '/iso/x.iso', 'raw'],
      ['vdb', 'file', '/img/shared.raw', 'raw'],
    ]);
    expect(notes).to.deep.equal(['disk vdb kept as defined: the restore point has no copy of it', 'new UUID and 1 new MAC address (chosen by libvirt)']);
  });

  it('refuses a restored disk the definition does not have, and what is not a domain', () => {
    expect(() => redefine(SAVED, { name: 'x', disks: [{ name: 'vdz', path: '/r', format: 'raw' }] })).to.throw(/no disk with target vdz/);
    expect(() => redefine('<network/>', { name: 'x', disks: [] })).to.throw(/no <domain>/);
  });
});
