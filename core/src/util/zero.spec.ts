import { expect } from 'chai';
import { isAllZero, zeroRange } from './zero.js';

describe('zeroRange', function () {
  it('zeros exactly [start, end) of shared and plain memory, past the zero buffer size too', function () {
    for (const make of [(n: number) => Buffer.from(new SharedArrayBuffer(n)), (n: number) => Buffer.alloc(n)]) {
      const size = 3 * 1024 * 1024 + 17;
      const b = make(size).fill(0xab);
      zeroRange(b, 5, size - 3);
      expect(b[4]).to.equal(0xab);
      expect(isAllZero(b.subarray(5, size - 3))).to.equal(true);
      expect([...b.subarray(size - 3)]).to.deep.equal([0xab, 0xab, 0xab]);
      zeroRange(b, 2, 2); // empty: nothing changes
      expect(b[2]).to.equal(0xab);
    }
  });
});
