import { expect } from 'chai';
import { ALIGNMENT, AlignedArena } from './aligned-memory.js';

describe('AlignedArena', function () {
  it('hands out shared pieces at page multiples of one memory, growing it without moving what was given', function () {
    const arena = new AlignedArena();
    const a = arena.take(1024 * 1024 + 5);
    expect(a.aligned).to.equal(true);
    expect(a.view.buffer).to.be.instanceOf(SharedArrayBuffer);
    expect(a.view.length).to.equal(1024 * 1024 + 5);
    a.view.fill(7);
    // the memory grows for later pieces (past its first 64 KiB pages); earlier pieces keep their bytes
    const pieces = Array.from({ length: 4 }, () => arena.take(1024 * 1024));
    for (const [i, p] of pieces.entries()) {
      expect(p.view.byteOffset % ALIGNMENT).to.equal(0);
      p.view.fill(i + 1);
    }
    expect(a.view.every((b) => b === 7)).to.equal(true);
    // no two pieces overlap: each still holds what was written into it
    for (const [i, p] of pieces.entries()) expect(p.view.every((b) => b === i + 1)).to.equal(true);
    expect(pieces[0].view.byteOffset).to.be.at.least(a.view.byteOffset + a.view.length);
  });
});
