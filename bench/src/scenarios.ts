import { promises as fs, mkdirSync } from 'node:fs';
import path from 'node:path';
import { COMPRESSION_LEVELS } from '@ferry/core';
import { ferryBackup, ferryRestore, writeJob, type SessionJson } from './ferry-case.js';
import { diskUsage, type Usage } from './measure.js';
import type { PeerTool } from './peers.js';
import { fileSha256, imageSha256, randomBytes, type BenchImage, type Change } from './vm-image.js';

export const SCENARIOS = {
  tiny: 'full backup, 1 MiB image (fixed cost)',
  full: 'full backup',
  second: 'second run, 1% changed, no CT',
  cbtFull: 'full backup, QEMU source',
  cbt: 'incremental, change tracking',
  restore: 'restore',
  sparseFull: 'full backup, 64 GiB sparse',
  sparseRestore: 'restore, 64 GiB sparse',
  nbd: 'NBD read, none',
  nbdTransport: 'NBD read, transport only',
  remoteEmbedded: 'full backup, embedded pipe (remote pair)',
  remote: 'full backup, proxy + repository services',
  serve: 'NBD read, ferry serve of a point',
} as const;
export type Scenario = (typeof SCENARIOS)[keyof typeof SCENARIOS];

/** One measured step of one tool. */
export interface Row extends Usage {
  tool: 'ferry' | 'restic' | 'borg' | 'nbdcopy';
  /** Compression level for Ferry; configuration for peers. */
  variant: string;
  scenario: Scenario;
  /** Repository size on disk after this step. */
  repoBytes?: number;
  /** Bytes the tool read from the source (Ferry's report), or what it had to read. */
  bytesRead?: number;
  /** Restores: allocated bytes of the output file, whether its content matched, sparse or not. */
  outputBytes?: number;
  verified?: boolean;
  /** Ferry: the session's own duration (report `durationMs`); wall minus this is process start-up and exit. */
  sessionMs?: number;
  /** Ferry's session report: per stage busy share and the busiest stage. */
  stages?: SessionJson['stages'];
  bottleneck?: string | null;
  note?: string;
  /** The NBD read path alone: time from connecting to the last byte, inside the process (no start-up). */
  readMs?: number;
}

/** The images one pass works on, made once per run. */
export interface Images {
  base: BenchImage;
  changed: BenchImage;
  changes: Change[];
  sparse: BenchImage;
  changedSha256: string;
}

export interface PassContext {
  work: string;
  images: Images;
  levels: readonly string[];
  log: (line: string) => void;
}

/** The working disk every tool backs up: the same path, first the base image, then the changed one. */
async function present(ctx: PassContext, img: BenchImage, dir: string, name = 'vm.raw'): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const at = path.join(dir, name);
  await fs.rm(at, { force: true });
  await fs.link(img.file, at); // a new inode and mtime, as a rewritten disk has for restic and borg
  return at;
}

function ferryRow(scenario: Scenario, level: string, usage: Usage, report: SessionJson, repoBytes: number): Row {
  return {
    tool: 'ferry',
    variant: level,
    scenario,
    ...pick(usage),
    repoBytes,
    sessionMs: report.durationMs,
    bytesRead: report.totals.bytesRead,
    stages: report.stages,
    bottleneck: report.bottleneck,
    note: report.disks.map((d) => `${d.transport} ${d.mode}`).join(', '),
  };
}

function pick(u: Usage): Usage {
  return { wallMs: u.wallMs, cpuMs: u.cpuMs, peakRssMiB: u.peakRssMiB, method: u.method };
}

/** Ferry at every level: full backup, second run on the changed image, restore of that point. */
export async function ferryLevels(ctx: PassContext): Promise<Row[]> {
  const rows: Row[] = [];
  const ds = path.join(ctx.work, 'ferry-ds');
  for (const level of ctx.levels.filter((l) => (COMPRESSION_LEVELS as readonly string[]).includes(l))) {
    const repo = path.join(ctx.work, `ferry-repo-${level}`);
    await fs.rm(repo, { recursive: true, force: true });
    const job = writeJob(ctx.work, { name: `bench-${level}`, source: { kind: 'file', datastore: ds, disk: 'vm.raw' }, repo, level });
    await present(ctx, ctx.images.base, ds);
    const full = await ferryBackup(job);
    rows.push(ferryRow(SCENARIOS.full, level, full.usage, full.report, await diskUsage(repo)));
    ctx.log(`ferry ${level}: ${SCENARIOS.full} ${secs(full.usage)}`);
    await present(ctx, ctx.images.changed, ds);
    const second = await ferryBackup(job);
    rows.push(ferryRow(SCENARIOS.second, level, second.usage, second.report, await diskUsage(repo)));
    ctx.log(`ferry ${level}: ${SCENARIOS.second} ${secs(second.usage)}`);
    rows.push(await ferryRestoreRow(ctx, job, 'vm.raw', level, repo, ctx.images.changedSha256));
    await fs.rm(repo, { recursive: true, force: true });
  }
  return rows;
}

async function ferryRestoreRow(ctx: PassContext, job: string, disk: string, level: string, repo: string, sha?: string, scenario: Scenario = SCENARIOS.restore): Promise<Row> {
  const out = path.join(ctx.work, 'restored.raw');
  const r = await ferryRestore(job, disk, out);
  const row: Row = {
    tool: 'ferry',
    variant: level,
    scenario,
    ...pick(r.usage),
    sessionMs: r.report.durationMs,
    repoBytes: await diskUsage(repo),
    outputBytes: await diskUsage(out),
    verified: sha ? (await fileSha256(out)) === sha : undefined,
    note: r.report.sparse ? 'sparse output' : 'non-sparse output',
  };
  await fs.rm(out, { force: true });
  ctx.log(`ferry ${level}: ${scenario} ${secs(r.usage)}${row.verified === false ? ' — CONTENT MISMATCH' : ''}`);
  return row;
}

/**
 * What every `ferry` run pays whatever the disk: Node start-up, loading the CLI and plugins, starting
 * the worker threads, opening the repository, committing. Measured on a 1 MiB image of random data.
 */
export async function fixedCostRun(ctx: PassContext): Promise<Row> {
  const ds = path.join(ctx.work, 'tiny-ds');
  const repo = path.join(ctx.work, 'ferry-repo-tiny');
  mkdirSync(ds, { recursive: true });
  await fs.writeFile(path.join(ds, 'tiny.raw'), randomBytes(1, 1, 1024 * 1024));
  await fs.rm(repo, { recursive: true, force: true });
  const job = writeJob(ctx.work, { name: 'bench-tiny', source: { kind: 'file', datastore: ds, disk: 'tiny.raw' }, repo, level: 'optimal' });
  const r = await ferryBackup(job);
  const row = ferryRow(SCENARIOS.tiny, 'optimal', r.usage, r.report, await diskUsage(repo));
  await fs.rm(repo, { recursive: true, force: true });
  ctx.log(`ferry optimal: ${SCENARIOS.tiny} ${secs(r.usage)}`);
  return row;
}

/** A peer on the same images: full backup, second run after the change, restore. */
export async function peerRuns(ctx: PassContext, tool: PeerTool): Promise<Row[]> {
  const rows: Row[] = [];
  await fs.rm(tool.repo, { recursive: true, force: true });
  await tool.init();
  const dir = path.join(ctx.work, `${tool.name}-ds`);
  const base = { tool: tool.name as Row['tool'], variant: tool.variant };
  const file = await present(ctx, ctx.images.base, dir);
  const full = await tool.backup(file);
  rows.push({ ...base, scenario: SCENARIOS.full, ...pick(full), repoBytes: await diskUsage(tool.repo) });
  ctx.log(`${tool.name}: ${SCENARIOS.full} ${secs(full)}`);
  await present(ctx, ctx.images.changed, dir);
  const second = await tool.backup(file);
  rows.push({ ...base, scenario: SCENARIOS.second, ...pick(second), repoBytes: await diskUsage(tool.repo) });
  ctx.log(`${tool.name}: ${SCENARIOS.second} ${secs(second)}`);
  const target = path.join(ctx.work, `${tool.name}-restore`);
  await fs.rm(target, { recursive: true, force: true });
  const r = await tool.restore(file, target);
  const outputBytes = await diskUsage(r.restored);
  const verified = (await fileSha256(r.restored)) === ctx.images.changedSha256;
  rows.push({
    ...base,
    scenario: SCENARIOS.restore,
    ...pick(r.usage),
    repoBytes: await diskUsage(tool.repo),
    outputBytes,
    verified,
    note: `${outputBytes < ctx.images.changed.sizeBytes * 0.9 ? 'sparse output' : 'non-sparse output'}; then sync (durable)`,
  });
  ctx.log(`${tool.name}: ${SCENARIOS.restore} ${secs(r.usage)}${verified ? '' : ' — CONTENT MISMATCH'}`);
  await fs.rm(target, { recursive: true, force: true });
  await fs.rm(tool.repo, { recursive: true, force: true });
  return rows;
}

/** The same data spread over a 64 GiB sparse image: Ferry `optimal`, full backup and restore. */
export async function sparseRuns(ctx: PassContext): Promise<Row[]> {
  const repo = path.join(ctx.work, 'ferry-repo-sparse');
  await fs.rm(repo, { recursive: true, force: true });
  const ds = path.dirname(ctx.images.sparse.file);
  const disk = path.basename(ctx.images.sparse.file);
  const job = writeJob(ctx.work, { name: 'bench-sparse', source: { kind: 'file', datastore: ds, disk }, repo, level: 'optimal' });
  const full = await ferryBackup(job);
  const rows = [ferryRow(SCENARIOS.sparseFull, 'optimal', full.usage, full.report, await diskUsage(repo))];
  ctx.log(`ferry optimal: ${SCENARIOS.sparseFull} ${secs(full.usage)}`);
  // Hashing 64 GiB of restored holes would take longer than the restore: checked by size only.
  rows.push(await ferryRestoreRow(ctx, job, disk, 'optimal', repo, undefined, SCENARIOS.sparseRestore));
  await fs.rm(repo, { recursive: true, force: true });
  return rows;
}

export { ferryRow, pick };

export function secs(u: Usage): string {
  return `${(u.wallMs / 1000).toFixed(2)} s wall, ${(u.cpuMs / 1000).toFixed(2)} s cpu, ${u.peakRssMiB.toFixed(0)} MiB peak`;
}

/** Computes the changed image's SHA-256 once (restores are checked against it). */
export async function withShas(i: Omit<Images, 'changedSha256'>): Promise<Images> {
  return { ...i, changedSha256: await imageSha256(i.changed) };
}

