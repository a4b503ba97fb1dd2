import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { defaultReadAhead, JobRuntime, PACK_TARGET_SIZE, runBackup } from '@ferry/core';
import { makeVmImage } from '@ferry/core/testing';
import { FIXTURE_PLUGINS } from './support/gated-backup.js';
import { tempDir, writeJob } from './support/helpers.js';

const MiB = 1024 * 1024;

/**
 * Bounded memory with a slow repository: the test-only `slow-filesystem` backend sleeps before every
 * put, so the repository is by far the slowest stage and everything upstream must wait for it
 * (backpressure) instead of queueing blocks. The session runs in this process while the heap
 * (JS heap plus the ArrayBuffers that hold blocks and packs) is sampled; its peak growth must stay
 * under what the pipe is allowed to hold, on disks several times larger than that bound.
 */
describe('a slow repository keeps memory bounded', function () {
  const t = tempDir();
  after(() => t.cleanup());
  const DISK_MIB = 320;
  const DISKS = 2;
  const BLOCK = 1 * MiB;
  const READ_AHEAD = defaultReadAhead(BLOCK); // SourceMover's default window, per disk (8 of 1 MiB)

  it(`backs up ${DISKS} x ${DISK_MIB} MiB with puts that sleep 150 ms, heap growth under the bound`, async function () {
    this.timeout(300_000);
    mkdirSync(path.join(t.dir, 'images', 'vm'), { recursive: true });
    for (let i = 0; i < DISKS; i++) {
      await makeVmImage(path.join(t.dir, 'images', 'vm', `d${i}.raw`), { sizeBytes: DISK_MIB * MiB, seed: 500 + i, holes: 0 });
    }
    const jobFile = writeJob(
      t.dir,
      [
        'job: slow-repo',
        `plugins: [${path.join(FIXTURE_PLUGINS, 'slow-repo')}]`,
        'source: { host: file, datastore: ./images, vms: [ { name: vm, disks: [vm/d0.raw, vm/d1.raw] } ] }',
        'transport: hotadd',
        'repository: { type: slow-filesystem, path: ./repo, putDelayMs: 150 }',
        'storage: { blockSize: 1MiB, compression: optimal }',
        `parallelDisks: ${DISKS}`,
      ].join('\n'),
    );
    // What the pipe may hold: each disk's read-ahead window, plus the pack writer's packs (one
    // filling, two being stored, each also as its sealed copy, and one sealed pack per disk waiting
    // for an upload slot), plus a margin for the rest (index, maps, garbage not yet collected).
    const pipe = READ_AHEAD * BLOCK * DISKS;
    const packs = (1 + 2 * 2 + DISKS) * PACK_TARGET_SIZE;
    const margin = 48 * MiB;
    const bound = pipe + packs + margin;
    expect(DISK_MIB * MiB * DISKS, 'the disks must be several times the bound').to.be.greaterThan(3 * bound);

    const stats = ((globalThis as { __ferrySlowRepo?: { puts: number; sleptMs: number } }).__ferrySlowRepo = { puts: 0, sleptMs: 0 });
    const used = (): number => {
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    (globalThis as { gc?: () => void }).gc?.();
    const base = used();
    let peak = base;
    let peakRss = 0;
    const sampler = setInterval(() => {
      peak = Math.max(peak, used());
      peakRss = Math.max(peakRss, process.memoryUsage().rss);
    }, 20);
    const rt = await JobRuntime.open(jobFile);
    try {
      const report = await runBackup(rt);
      expect(report.status, JSON.stringify(report.error ?? report.vms)).to.equal('success');
      expect(report.disks.map((d) => d.status)).to.deep.equal(['success', 'success']);
      // The repository really was the slow stage: it slept through many puts.
      expect(stats.puts).to.be.greaterThan(10);
      expect(report.bottleneck).to.equal('target write');
    } finally {
      clearInterval(sampler);
      await rt.close();
    }
    const growth = peak - base;
    const msg = `peak heap+buffers growth ${(growth / MiB).toFixed(0)} MiB, bound ${(bound / MiB).toFixed(0)} MiB, data ${DISK_MIB * DISKS} MiB, peak RSS ${(peakRss / MiB).toFixed(0)} MiB, ${stats.puts} puts`;
    expect(growth, msg).to.be.lessThan(bound);
  });
});
