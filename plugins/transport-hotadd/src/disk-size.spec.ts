import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { expect } from 'chai';
import { skipBecause, skipForMissingTools } from '@ferry/core/testing';
import { deviceNumbers, diskSize } from './disk-size.js';

/** A block device this process may open, if the machine has one. */
function readableBlockDevice(): string | undefined {
  for (const name of fs.existsSync('/dev') ? fs.readdirSync('/dev').sort() : []) {
    const dev = `/dev/${name}`;
    try {
      if (!fs.statSync(dev).isBlockDevice()) continue;
      fs.closeSync(fs.openSync(dev, 'r'));
      return dev;
    } catch {
      // not this one
    }
  }
  return undefined;
}

describe('diskSize', () => {
  it('decodes major and minor numbers the way glibc encodes them', () => {
    expect(deviceNumbers(0x0700n)).to.deep.equal({ major: 7, minor: 0 });
    expect(deviceNumbers(0x10305n)).to.deep.equal({ major: 259, minor: 5 });
    // makedev(0x1234, 0x56789): the major's high bits sit above bit 44, the minor's above bit 20
    expect(deviceNumbers(0x1000_5672_3489n)).to.deep.equal({ major: 0x1234, minor: 0x56789 });
  });

  it('sizes a block device as the kernel does (blockdev --getsize64)', async function () {
    const dev = readableBlockDevice();
    if (!dev) skipBecause(this, 'no block device this process may open');
    let expected: number;
    try {
      expected = Number(execFileSync('blockdev', ['--getsize64', dev!], { encoding: 'utf8' }).trim());
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') skipForMissingTools(this, { blockdev: 'util-linux' });
      throw err;
    }
    const fh = await fs.promises.open(dev!, 'r');
    try {
      expect(await diskSize(fh, { name: 'd', path: dev })).to.equal(expected);
    } finally {
      await fh.close();
    }
  });
});
