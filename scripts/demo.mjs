// npm run demo: generates a VM-like disk, backs it up, changes 1% of it, backs it up again,
// restores both restore points and proves each is byte-identical to the disk it was taken from.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { changeVmImage, firstDifference, makeVmImage } from '@ferry/core/testing';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const work = path.join(root, 'demo-work');
const ferry = path.join(root, 'bin', 'ferry.js');
const MiB = 1024 * 1024;

function run(...args) {
  const quiet = args.includes('--json');
  if (!quiet) console.log(`\n$ ferry ${args.map((a) => path.relative(root, a) || a).join(' ')}`);
  const r = spawnSync(process.execPath, [ferry, ...args], { stdio: ['ignore', 'pipe', 'inherit'], encoding: 'utf8' });
  if (!quiet) process.stdout.write(r.stdout);
  if (r.status !== 0) throw new Error(`ferry ${args[0]} exited with ${r.status}`);
  return r.stdout;
}

rmSync(work, { recursive: true, force: true });
mkdirSync(path.join(work, 'images'), { recursive: true });
const job = path.join(work, 'job.yaml');
copyFileSync(path.join(root, 'examples', 'nightly-web.yaml'), job);
const image = path.join(work, 'images', 'web01.raw');

const stats = await makeVmImage(image, { sizeBytes: 512 * MiB, seed: 2026, holes: 0.4 });
console.log(`Generated ${path.relative(root, image)}: 512 MiB, ${Math.round(stats.dataBytes / MiB)} MiB allocated (text, random, duplicated and zero regions), the rest holes`);

run('backup', job);
const v1 = path.join(work, 'web01.v1.raw');
copyFileSync(image, v1);
const points1 = JSON.parse(run('list', job, '--json')).restorePoints;

const changed = await changeVmImage(image, { count: Math.round((512 * MiB) / (64 * 1024) / 100), length: 64 * 1024, seed: 7 });
console.log(`\nChanged ${changed.length} ranges of 64 KiB (about 1% of the disk) and backing up again:`);
run('backup', job);
run('list', job);

const checks = [
  { point: points1[0].id, expected: v1 },
  { point: 'latest', expected: image },
];
let ok = true;
for (const c of checks) {
  const out = path.join(work, `restored-${c.point}.raw`);
  run('restore', job, '--vm', 'web01', '--disk', 'web01.raw', '--point', c.point, '--to', out);
  const diff = await firstDifference(c.expected, out);
  console.log(diff === -1 ? `restore of ${c.point} is byte-identical to the disk it was taken from` : `MISMATCH at byte ${diff} for ${c.point}`);
  ok &&= diff === -1;
}
console.log(ok ? '\nDemo OK: two restore points, both restore byte-identical.' : '\nDemo FAILED');
process.exitCode = ok ? 0 : 1;
