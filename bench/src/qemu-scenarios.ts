import { execFile, spawn } from 'node:child_process';
import { promises as fs, mkdirSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { StorageDaemon } from '@ferry/source-qemu/dist/testing/storage-daemon.js';
import { NbdClient } from '@ferry/transport-nbd';
import { ferryBackup, ferryRestore, writeJob } from './ferry-case.js';
import { diskUsage, installed, measure } from './measure.js';
import { manifest } from './plugins/nbd-export-host.js';
import { ferryRow, pick, SCENARIOS, secs, type PassContext, type Row } from './scenarios.js';
import { fileSha256 } from './vm-image.js';

const run = promisify(execFile);
const NBD_READ = path.join(path.dirname(fileURLToPath(import.meta.url)), 'nbd-read.js');
const HOST_ENTRY = path.join(path.dirname(fileURLToPath(import.meta.url)), 'plugins', 'nbd-export-host.js');

/** The tools a scenario needs, with their Debian packages; the first missing one, or undefined. */
export function missing(tools: Record<string, string>): string | undefined {
  for (const [tool, pkg] of Object.entries(tools)) if (!installed(tool)) return `${tool} is not installed (Debian package ${pkg})`;
  return undefined;
}

export const CBT_TOOLS = { 'qemu-storage-daemon': 'qemu-system-common', 'qemu-img': 'qemu-utils' };
export const NBD_TOOLS = { 'qemu-nbd': 'qemu-utils', nbdcopy: 'libnbd-bin' };

/**
 * Change tracking: the base image imported as qcow2 into a qemu-storage-daemon (the "VM"), a full
 * backup through Ferry's QEMU source (fleecing + NBD), the guest writes the 1% change set through
 * the daemon's writable export, and the incremental run reads only the persistent dirty bitmap's
 * extents. Only Ferry has this; its time compares with restic's second run.
 */
export async function changeTrackingRuns(ctx: PassContext): Promise<Row[]> {
  const dir = await fs.mkdtemp(path.join(ctx.work, 'qsd-'));
  await run('qemu-img', ['convert', '-q', '-f', 'raw', '-O', 'qcow2', ctx.images.base.file, path.join(dir, 'disk0.qcow2')]);
  const qsd = await StorageDaemon.start({ dir, disks: ['disk0'], writableExports: true, vm: 'vm' });
  const repo = path.join(ctx.work, 'ferry-repo-cbt');
  const rows: Row[] = [];
  try {
    await fs.rm(repo, { recursive: true, force: true });
    const job = writeJob(ctx.work, { name: 'bench-cbt', source: { kind: 'qemu', qmp: qsd.qmp, nbd: `unix:${qsd.nbdPath}`, disk: 'disk0' }, repo, level: 'optimal' });
    const full = await ferryBackup(job);
    rows.push(ferryRow(SCENARIOS.cbtFull, 'optimal', full.usage, full.report, await diskUsage(repo)));
    ctx.log(`ferry optimal: ${SCENARIOS.cbtFull} ${secs(full.usage)}`);
    await guestWrites(`nbd+unix:///disk0?socket=${qsd.nbdPath}`, ctx);
    const incr = await ferryBackup(job);
    const changedBytes = ctx.images.changes.reduce((n, c) => n + c.data.length, 0);
    const row = ferryRow(SCENARIOS.cbt, 'optimal', incr.usage, incr.report, await diskUsage(repo));
    row.note = `${row.note}; read ${(incr.report.totals.bytesRead / changedBytes).toFixed(2)}x the ${mib(changedBytes)} MiB changed`;
    if (incr.report.disks[0]?.mode !== 'incremental') row.note += ` — NOT INCREMENTAL: ${incr.report.disks[0]?.modeReason}`;
    rows.push(row);
    ctx.log(`ferry optimal: ${SCENARIOS.cbt} ${secs(incr.usage)} (${row.note})`);
    // The incremental point must hold the guest's disk as changed: restore it (not timed) and compare.
    const out = path.join(ctx.work, 'restored-cbt.raw');
    await ferryRestore(job, 'disk0', out);
    row.verified = (await fileSha256(out)) === ctx.images.changedSha256;
    if (!row.verified) ctx.log('ferry optimal: incremental restore point — CONTENT MISMATCH');
    await fs.rm(out, { force: true });
  } finally {
    await qsd.stop();
    await fs.rm(repo, { recursive: true, force: true });
  }
  return rows;
}

/** The guest writes the change set through the daemon's writable NBD export. */
async function guestWrites(address: string, ctx: PassContext): Promise<void> {
  const client = await NbdClient.connect({ address });
  try {
    for (const c of ctx.images.changes) await client.write(c.offset, c.data);
    await client.flush();
  } finally {
    await client.close();
  }
}

/**
 * The NBD read path: one read-only qemu-nbd export of the base image; nbdcopy copies its allocated
 * data to `null:`, Ferry backs it up with `compression: none` through the NBD transport (a
 * benchmark-only source host names the export). Same server, same data, same page cache.
 */
export interface NbdVariant {
  connections: number;
  /** Folder for the repository; default the work folder (the same disk as every other repository). */
  repoDir?: string;
  label: string;
}

export async function nbdReadRuns(ctx: PassContext, variants: NbdVariant[]): Promise<Row[]> {
  const sock = path.join(ctx.work, 'qemu-nbd.sock');
  await fs.rm(sock, { force: true });
  const server = spawn('qemu-nbd', ['--read-only', '--persistent', '--shared=32', '--format=raw', `--socket=${sock}`, ctx.images.base.file], { stdio: 'ignore' });
  const uri = `nbd+unix:///?socket=${sock}`;
  const rows: Row[] = [];
  const pluginDir = path.join(ctx.work, 'bench-plugins', 'nbd-export-host');
  mkdirSync(pluginDir, { recursive: true });
  writeFileSync(path.join(pluginDir, 'package.json'), JSON.stringify(manifest(HOST_ENTRY), null, 2));
  try {
    await waitForSocket(sock, server);
    // The earlier scenarios' writeback (packs and restored images, gigabytes) is flushed first, so
    // neither reader shares the cores with the kernel writing it out (it slowed Ferry's one-thread
    // read path to 0.69-0.74x of nbdcopy's in full runs, against 1.01-1.06x after a sync).
    await promisify(execFile)('sync');
    const copy = await measure('nbdcopy', [uri, 'null:']);
    rows.push({ tool: 'nbdcopy', variant: 'defaults (4 connections, extents)', scenario: SCENARIOS.nbd, ...pick(copy), bytesRead: ctx.images.base.dataBytes });
    ctx.log(`nbdcopy: ${SCENARIOS.nbd} ${secs(copy)}`);
    // Ferry's read path alone, like nbdcopy: the NBD transport with as many connections, into null.
    const alone = await measure(process.execPath, [NBD_READ, uri, '4', '16']);
    const got = JSON.parse(alone.stdout) as { bytesRead: number; ms: number };
    rows.push({
      tool: 'ferry',
      variant: 'nbd transport (4 connections, 16 x 1 MiB reads in flight), into null',
      scenario: SCENARIOS.nbdTransport,
      ...pick(alone),
      bytesRead: got.bytesRead,
      readMs: got.ms,
      note: `read path ${(got.ms / 1000).toFixed(2)} s (${mib(got.bytesRead / (got.ms / 1000))} MiB/s) after start-up`,
    });
    ctx.log(`ferry nbd transport alone: ${secs(alone)}, read path ${(got.ms / 1000).toFixed(2)} s`);
    for (const [i, v] of variants.entries()) {
      const repo = path.join(v.repoDir ?? ctx.work, `ferry-bench-repo-nbd-${process.pid}-${i}`);
      await fs.rm(repo, { recursive: true, force: true });
      try {
        const job = writeJob(ctx.work, { name: `bench-nbd-${i}`, source: { kind: 'nbd', pluginDir: path.dirname(pluginDir), address: uri, connections: v.connections }, repo, level: 'none' });
        const r = await ferryBackup(job);
        const row = ferryRow(SCENARIOS.nbd, v.label, r.usage, r.report, await diskUsage(repo));
        rows.push(row);
        ctx.log(`ferry ${row.variant}: ${SCENARIOS.nbd} ${secs(r.usage)}`);
      } finally {
        await fs.rm(repo, { recursive: true, force: true });
      }
    }
  } finally {
    server.kill('SIGTERM');
    await new Promise((r) => (server.exitCode !== null ? r(undefined) : server.once('exit', r)));
  }
  return rows;
}

async function waitForSocket(sock: string, server: ReturnType<typeof spawn>): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect({ path: sock });
      s.once('connect', () => (s.destroy(), resolve(true)));
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (server.exitCode !== null) throw new Error(`qemu-nbd exited (${server.exitCode}) before listening on ${sock}`);
    if (Date.now() > deadline) throw new Error(`qemu-nbd did not listen on ${sock} within 10 s`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function mib(n: number): string {
  return (n / 1024 / 1024).toFixed(0);
}
