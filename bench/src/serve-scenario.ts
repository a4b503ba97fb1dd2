import { execFile, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { ferryBackup, writeJob } from './ferry-case.js';
import { measure } from './measure.js';
import { pick, SCENARIOS, secs, type PassContext, type Row } from './scenarios.js';
import type { BenchImage } from './vm-image.js';

const run = promisify(execFile);
const FERRY = path.join(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..'), 'bin', 'ferry.js');
export const SERVE_TOOLS = { nbdcopy: 'libnbd-bin', 'qemu-io': 'qemu-utils' };

/**
 * `ferry serve` as a peer of `qemu-nbd`: the base image's point and the 64 GiB sparse image's point
 * (level `optimal`) are served on a unix socket; time to first byte is from starting `ferry serve`
 * to the end of a 4 KiB read at offset 0 by `qemu-io` (both processes' start-up included), then
 * `nbdcopy` copies the export to `null:` (extents, 4 connections), comparable with nbdcopy of the
 * same data from qemu-nbd (the `NBD read` row): every block is read from the repository, checked and
 * decompressed on the way.
 */
export async function serveRuns(ctx: PassContext): Promise<Row[]> {
  const rows: Row[] = [];
  const cases: { label: string; image: BenchImage }[] = [
    { label: `${(ctx.images.base.sizeBytes / 2 ** 30).toFixed(0)} GiB point`, image: ctx.images.base },
    { label: `${(ctx.images.sparse.sizeBytes / 2 ** 30).toFixed(0)} GiB sparse point`, image: ctx.images.sparse },
  ];
  for (const [i, c] of cases.entries()) {
    if (i > 0 && c.image === ctx.images.base) continue;
    const repo = path.join(ctx.work, `ferry-repo-serve-${i}`);
    await fs.rm(repo, { recursive: true, force: true });
    const disk = path.basename(c.image.file);
    const job = writeJob(ctx.work, { name: `bench-serve-${i}`, source: { kind: 'file', datastore: path.dirname(c.image.file), disk }, repo, level: 'optimal' });
    try {
      await ferryBackup(job);
      const sock = path.join(ctx.work, `serve-${i}.sock`);
      const t0 = performance.now();
      const server = spawn(process.execPath, [FERRY, 'serve', job, '--vm', 'vm', '--disk', disk, '--listen', `unix:${sock}`], { stdio: ['ignore', 'pipe', 'inherit'] });
      try {
        await new Promise<void>((resolve, reject) => {
          let out = '';
          server.stdout!.on('data', (d: Buffer) => {
            out += d.toString();
            if (out.includes('listening on')) resolve();
          });
          server.once('exit', (code) => reject(new Error(`ferry serve exited (${code}) before listening`)));
        });
        const uri = `nbd+unix:///${disk}?socket=${sock}`;
        await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read 0 4096', uri]);
        const ttfbMs = performance.now() - t0;
        const copy = await measure('nbdcopy', [uri, 'null:']);
        rows.push({
          tool: 'ferry',
          variant: `serve, ${c.label} (read by nbdcopy)`,
          scenario: SCENARIOS.serve,
          ...pick(copy),
          bytesRead: c.image.dataBytes,
          note: `time to first byte ${ttfbMs.toFixed(0)} ms (start-up included)`,
        });
        ctx.log(`nbdcopy from ferry serve, ${c.label}: ${secs(copy)}; time to first byte ${ttfbMs.toFixed(0)} ms`);
      } finally {
        server.kill('SIGTERM');
        await new Promise((r) => (server.exitCode !== null ? r(undefined) : server.once('exit', r)));
      }
    } finally {
      await fs.rm(repo, { recursive: true, force: true });
    }
  }
  return rows;
}
