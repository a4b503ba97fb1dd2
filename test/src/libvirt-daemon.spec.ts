import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { skipUnlessTools } from '@ferry/core/testing';
import { tempDir } from './support/helpers.js';
import { diskOnlyDomainXml, guestWrite, skipUnlessLibvirt, startLibvirtd, type LibvirtDaemon } from './support/libvirt-daemon.js';

describe('test support: a private libvirtd', function () {
  this.timeout(120_000);
  let tmp: ReturnType<typeof tempDir>;
  let d: LibvirtDaemon | undefined;

  before(async function () {
    skipUnlessLibvirt(this);
    skipUnlessTools(this, { 'qemu-img': 'qemu-utils', nbdinfo: 'libnbd-bin' });
    tmp = tempDir('ferry-libvirtd-');
    d = await startLibvirtd(path.join(tmp.dir, 'daemon'));
  });
  after(async () => {
    await d?.stop();
    tmp?.cleanup();
  });

  it('runs a disk-only domain whose pull-mode backup exports its disk and dirty bitmap', () => {
    const img = path.join(tmp.dir, 'd1.qcow2');
    spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', img, '16M']);
    const xml = path.join(tmp.dir, 'dom.xml');
    writeFileSync(xml, diskOnlyDomainXml('spec1', [{ dev: 'vda', file: img, format: 'qcow2' }]));
    d!.virsh('create', xml);
    expect(d!.virsh('domstate', 'spec1').trim()).to.equal('running');
    const cp = (name: string): string => {
      const f = path.join(tmp.dir, `${name}.xml`);
      writeFileSync(f, `<domaincheckpoint><name>${name}</name><disks><disk name='vda' checkpoint='bitmap'/></disks></domaincheckpoint>`);
      return f;
    };
    const sock = path.join(tmp.dir, 'nbd.sock');
    const backup = (incremental: string): string => {
      const f = path.join(tmp.dir, 'backup.xml');
      writeFileSync(f, `<domainbackup mode='pull'>${incremental}<server transport='unix' socket='${sock}'/><disks><disk name='vda' backup='yes' type='file'><scratch file='${tmp.dir}/scratch.qcow2'/></disk></disks></domainbackup>`);
      return f;
    };
    d!.virsh('backup-begin', 'spec1', backup(''), cp('c1'));
    d!.virsh('domjobabort', 'spec1');
    guestWrite(d!, 'spec1', 'vda', 1 << 20, 65536, 0x22);
    d!.virsh('backup-begin', 'spec1', backup('<incremental>c1</incremental>'), cp('c2'));
    const map = spawnSync('nbdinfo', ['--map=qemu:dirty-bitmap:backup-vda', `nbd+unix:///vda?socket=${sock}`], { encoding: 'utf8' });
    d!.virsh('domjobabort', 'spec1');
    expect(map.stdout.split('\n').filter((l) => l.includes('dirty')).map((l) => l.trim().split(/\s+/).slice(0, 2).map(Number))).to.deep.equal([[1 << 20, 65536]]);
  });
});
