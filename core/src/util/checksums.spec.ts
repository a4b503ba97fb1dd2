import { expect } from 'chai';
import { crc32, sha256 } from './checksums.js';

describe('checksums', function () {
  it('CRC-32 (IEEE) matches the standard check value and chains with a seed', function () {
    expect(crc32(Buffer.from('123456789'))).to.equal(0xcbf43926);
    const whole = crc32(Buffer.from('hello world'));
    expect(crc32(Buffer.from(' world'), crc32(Buffer.from('hello')))).to.equal(whole);
  });

  it('SHA-256 matches the standard test vector', function () {
    expect(sha256(Buffer.from('abc')).toString('hex')).to.equal('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});
