import assert from 'node:assert/strict';
import { matchDisk, merge, parseSwaps } from './swap-extents.js';

describe('guest-linux swap extents', function () {
  it('places a swap partition on its disk, keeping the header page', function () {
    const { disks, problems } = parseSwaps('part vda 20971520 2048 2097152\n');
    assert.deepEqual(problems, []);
    assert.deepEqual(disks, [{ disk: 'vda', sizeBytes: 20971520 * 512, extents: [{ offset: 2048 * 512 + 4096, length: 2097152 * 512 - 4096 }] }]);
  });

  it("places a swap file's extents (filefrag -e) through its file system's partition start, merging neighbours", function () {
    const out = [
      'file vdb 4194304 2048 /swapfile',
      '|Filesystem type is: ef53',
      '|File size of /swapfile is 16777216 (4096 blocks of 4096 bytes)',
      '| ext:     logical_offset:        physical_offset: length:   expected: flags:',
      '|   0:        0..    2047:      34816..     36863:   2048:            ',
      '|   1:     2048..    3071:      36864..     37887:   1024:            ',
      '|   2:     3072..    4095:      98304..     99327:   1024:      37888: last,eof',
      '|/swapfile: 3 extents found',
      '',
    ].join('\n');
    const { disks } = parseSwaps(out);
    const base = 2048 * 512;
    assert.deepEqual(disks[0].extents, [
      { offset: base + 34816 * 4096 + 4096, length: 3072 * 4096 - 4096 },
      { offset: base + 98304 * 4096, length: 1024 * 4096 },
    ]);
    assert.equal(disks[0].sizeBytes, 4194304 * 512);
  });

  it('names what it cannot place instead of guessing', function () {
    const { disks, problems } = parseSwaps('unknown /dev/dm-1 on a mapped device (LVM, dm-crypt, md)\nfile vda 100 0 /s\n|   0:        0..     767:          0..         0:      0:             last,unknown_loc,delalloc,eof\n');
    assert.deepEqual(disks, []);
    assert.equal(problems.length, 2);
  });

  it('matches a guest disk to the VM disk of the same size only when that is unambiguous', function () {
    const d = [
      { disk: 'vda', sizeBytes: 100, extents: [] },
      { disk: 'vdb', sizeBytes: 200, extents: [] },
      { disk: 'vdc', sizeBytes: 200, extents: [] },
    ];
    assert.equal(matchDisk(d, { name: 'disk0', size: 100 })?.disk, 'vda');
    assert.equal(matchDisk(d, { name: 'disk1', size: 200 }), undefined);
    assert.equal(matchDisk(d, { name: 'disk2' }), undefined);
    assert.deepEqual(merge([{ offset: 10, length: 5 }, { offset: 0, length: 10 }, { offset: 20, length: 1 }]), [{ offset: 0, length: 15 }, { offset: 20, length: 1 }]);
  });
});

describe('guest-linux on the backup server itself', function () {
  it('refuses to freeze all file systems, or /, of the machine the backup runs on', async function () {
    const { ownMachineRefusal } = await import('./own-machine.js');
    assert.match(ownMachineRefusal('b1', 'b1', undefined)!, /name the file systems to freeze/);
    assert.match(ownMachineRefusal('b1', 'b1', ['/srv/data', '/'])!, /root file system/);
    assert.match(ownMachineRefusal('b1', 'b1', ['//'])!, /root file system/);
    assert.equal(ownMachineRefusal('b1', 'b1', ['/srv/data']), undefined);
    assert.equal(ownMachineRefusal('b1', 'b2', undefined), undefined);
    assert.equal(ownMachineRefusal(undefined, 'b2', undefined), undefined);
  });
});
