import { expect } from 'chai';
import { checkDeviceFits, deviceNumbers, deviceOpenError } from './restore-device.js';

describe('block-device restore targets', function () {
  it('decodes major and minor of a Linux device number, small and large', function () {
    expect(deviceNumbers(0x0700n)).to.deep.equal({ major: 7, minor: 0 }); // /dev/loop0
    expect(deviceNumbers(0x0811n)).to.deep.equal({ major: 8, minor: 17 }); // /dev/sdb1
    // glibc makedev(259, 70000): minor bits 8+ go to bits 20+, major bits 12+ to bits 44+
    const major = 0x1103;
    const minor = 70000;
    const rdev = (BigInt(major & 0xfff) << 8n) | (BigInt(major & ~0xfff) << 32n) | BigInt(minor & 0xff) | (BigInt(minor & ~0xff) << 12n);
    expect(deviceNumbers(rdev)).to.deep.equal({ major, minor });
  });

  it('refuses a device smaller than the disk with RESTORE_TARGET, naming both sizes', function () {
    expect(() => checkDeviceFits('/dev/sdz', 4096, 8192, 'd')).to.throw().with.property('code', 'RESTORE_TARGET');
    expect(() => checkDeviceFits('/dev/sdz', 4096, 8192, 'd')).to.throw(/\/dev\/sdz holds 4096 bytes; the disk needs 8192/);
    expect(() => checkDeviceFits('/dev/sdz', 8192, 8192, 'd')).to.not.throw();
    expect(() => checkDeviceFits('/dev/sdz', 1 << 20, 8192, 'd')).to.not.throw();
  });

  it('says a device that answers EBUSY to an exclusive open is mounted or in use', function () {
    const busy = deviceOpenError('/dev/sdz', 'EBUSY', 'd');
    expect(busy.code).to.equal('RESTORE_TARGET');
    expect(busy.message).to.include('/dev/sdz is mounted or in use');
    expect(deviceOpenError('/dev/sdz', 'EACCES', 'd').message).to.include('cannot open block device /dev/sdz for writing: EACCES');
  });
});
