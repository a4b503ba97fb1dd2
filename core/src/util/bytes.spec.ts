import { expect } from 'chai';
import { randomBytes } from 'node:crypto';
import { copyBytes } from './bytes.js';

describe('copyBytes', function () {
  const makers = [(n: number) => Buffer.from(new SharedArrayBuffer(n)), (n: number) => Buffer.alloc(n), (n: number) => new Uint8Array(new SharedArrayBuffer(n))];

  it('copies exactly the source to [at, at + length) between shared and plain memory, any alignment', function () {
    for (const makeSrc of makers) {
      for (const makeDst of makers) {
        for (const [len, at] of [[1, 0], [7, 3], [1024 * 1024 + 5, 18], [4096, 16]] as const) {
          const data = randomBytes(len);
          const src = makeSrc(len + 3).subarray(3);
          src.set(data);
          const dst = makeDst(len + at + 2).fill(0xab);
          copyBytes(src, dst, at);
          expect(Buffer.from(dst.buffer, dst.byteOffset + at, len).equals(data)).to.equal(true);
          if (at > 0) expect(dst[at - 1]).to.equal(0xab);
          expect([dst[at + len], dst[at + len + 1]]).to.deep.equal([0xab, 0xab]);
        }
      }
    }
  });

  it('copies overlapping ranges of one buffer as a memmove, and nothing for an empty source', function () {
    const b = Buffer.from(new SharedArrayBuffer(64));
    for (let i = 0; i < 64; i++) b[i] = i;
    copyBytes(b.subarray(0, 40), b, 5);
    expect([...b.subarray(5, 45)]).to.deep.equal([...Array(40).keys()]);
    copyBytes(b.subarray(10, 20), b, 8);
    expect([...b.subarray(8, 18)]).to.deep.equal([5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
    const before = Buffer.from(b);
    copyBytes(new Uint8Array(0), b, 64);
    expect(b.equals(before)).to.equal(true);
  });

  it('refuses a copy that does not fit', function () {
    expect(() => copyBytes(Buffer.alloc(5), Buffer.alloc(8), 4)).to.throw(RangeError);
    expect(() => copyBytes(Buffer.alloc(1), Buffer.alloc(8), -1)).to.throw(RangeError);
  });
});
