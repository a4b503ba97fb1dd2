import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import type { Allocation, DiskImage } from '../restore-access/disk-image.js';
import type { JobRuntime } from '../session/job-runtime.js';
import { Prng } from '../testing/vm-image.js';
import { commitView } from './commit-view.js';
import { OverlayImage } from './overlay-image.js';

function patterned(size: number): DiskImage {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i >> 12) & 0xff;
  return {
    size,
    blockSize: 1 << 20,
    read: async (o, l) => Buffer.from(bytes.subarray(o, o + l)),
    allocation: (o, l): Allocation[] => [{ offset: o, length: l, zero: false }],
    close: async () => undefined,
  };
}

describe('commitView: copying a served view while it is written', () => {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-commit-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('the target equals the view as it stood at the end, with writes landing during the copy', async () => {
    const size = 24 * 1024 * 1024 + 512;
    const ov = await OverlayImage.open(path.join(dir, 'ov'), patterned(size), { vm: 'v', disk: 'd', point: 'p' });
    const rng = new Prng(11);
    let stop = false;
    let writes = 0;
    const writer = (async () => {
      while (!stop) {
        const off = rng.int(size - 70_000);
        if (rng.int(4) === 0) await ov.writeZeroes(off, 1 + rng.int(70_000));
        else await ov.write(off, rng.fill(Buffer.alloc(1 + rng.int(70_000))));
        writes++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    const to = path.join(dir, 'out.raw');
    // Not used for a file target: the job runtime only matters for network targets.
    const report = await commitView({} as JobRuntime, ov, { vm: 'v', disk: 'd', to, onPass: (_n, final) => void (final && (stop = true)) });
    stop = true;
    await writer;
    expect(writes).to.be.greaterThan(0);
    expect(report.passes).to.be.at.least(2);
    expect(readFileSync(to).equals(await ov.read(0, size))).to.equal(true);
    await ov.close();
  });
});
