import { expect } from 'chai';
import { compressedExtent } from './compressed-cluster.js';

/** An L2 entry for a compressed cluster, split into the 32-bit halves the reader takes. */
function entry(clusterBits: number, host: bigint, extraSectors: bigint): [number, number] {
  const x = BigInt(62 - (clusterBits - 8));
  const value = (1n << 62n) | (extraSectors << x) | host;
  return [Number(value >> 32n), Number(value & 0xffff_ffffn)];
}

describe('compressedExtent', () => {
  it('takes the host offset from bits 0..x-1 and the extra sectors from bits x..61 (x = 62 - (cluster_bits - 8))', () => {
    // 512-byte clusters leave one bit for the count, so at most one extra sector there.
    for (const [bits, extra] of [[9, 1], [12, 3], [16, 3], [21, 3]]) {
      const [hi, lo] = entry(bits, 0x12_3456n, BigInt(extra));
      expect(compressedExtent(hi, lo, bits), `cluster_bits ${bits}`).to.deep.equal({
        host: 0x12_3456,
        // the sectors from the one holding the offset, less the offset's place inside it
        size: (extra + 1) * 512 - (0x12_3456 % 512),
      });
    }
  });

  it('spans exactly one sector when no extra sector is used', () => {
    const [hi, lo] = entry(16, 5n * 512n + 500n, 0n);
    expect(compressedExtent(hi, lo, 16)).to.deep.equal({ host: 5 * 512 + 500, size: 12 });
  });

  it('reads the widest sector counts (2 MiB clusters: 13 bits) and offsets above 2^32', () => {
    const [hi, lo] = entry(21, 0x1_0000_0200n, (1n << 13n) - 1n);
    expect(compressedExtent(hi, lo, 21)).to.deep.equal({ host: 0x1_0000_0200, size: 8192 * 512 });
  });
});
