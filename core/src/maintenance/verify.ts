import { randomInt } from 'node:crypto';
import { FerryError, isFerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import type { Repository } from '../repository/repository.js';
import { encodeIndex } from '../repository/pack.js';
import { RepositoryLock } from '../repository/repository-lock.js';
import type { ReportedError } from '../errors.js';
import { reindexUnlistedPacks } from './gc-v2.js';
import { checkBlocks, type BlockFinding, type BlockToCheck, type CheckCounters } from './block-check.js';
import { eachMap, forEachHash, loadPoints, type PointProblem } from './points-reader.js';
import { affectedPoints, recordFindings, whoNeeds, type AffectedPoint, type DamagedBlockReport } from './verify-results.js';

export interface VerifyOptions {
  /** Share of the needed blocks to read, 0 < p <= 100 (default 100: every block). */
  samplePercent?: number;
  /** Only these restore points (after a backup: the session's points); default every point. */
  points?: { vm: string; id: string }[];
  onProgress?: (c: CheckCounters, total: number) => void;
}

export interface VerifyReport {
  repository: string;
  status: 'ok' | 'damaged';
  startedAt: string;
  durationMs: number;
  samplePercent: number;
  restorePoints: { checked: number; damaged: number };
  blockMaps: { checked: number; damaged: number };
  /** needed: distinct blocks the points need; checked: read this run; damaged/missing: failed. */
  blocks: { needed: number; checked: number; ok: number; damaged: number; missing: number };
  /** Encoded bytes read from packs, raw bytes proven by SHA-256, and the read rate in MiB/s. */
  bytesRead: number;
  rawBytesVerified: number;
  throughputMiBps: number;
  damagedBlocks: DamagedBlockReport[];
  damagedObjects: { object: string; kind: 'manifest' | 'map' | 'index'; vm?: string; restorePoint?: string; disk?: string; code: string; message: string }[];
  /** Index objects that failed their checks and were rebuilt from their intact packs' trailers. */
  repairedObjects: { object: string; message: string }[];
  affectedPoints: AffectedPoint[];
  /** The repository object that records known-damaged blocks for self-heal, or null when none are known. */
  damagedBlocksObject: string | null;
  error?: ReportedError;
}

/**
 * The health check: reads every block the restore points need (or a random sample), checks each
 * completely, checks every manifest and block map, and names every damaged or missing block with
 * each point, disk and offset that needs it. What it finds is written to the damaged-blocks list,
 * which makes the next backups heal those blocks. Takes a `verify` lock for the whole run.
 */
export async function runVerify(repo: Repository, codec: BlockCodec, opts: VerifyOptions = {}): Promise<VerifyReport> {
  const t0 = performance.now();
  const lock = await RepositoryLock.acquire(repo.backend, { operation: 'verify' });
  try {
    const report = emptyReport(repo, opts.samplePercent ?? 100);
    const loaded = await loadPoints(repo);
    const points = opts.points ? loaded.points.filter((p) => opts.points!.some((q) => q.vm === p.vm && q.id === p.id)) : loaded.points;
    const problems: PointProblem[] = opts.points ? [] : [...loaded.problems];
    const needed = new Set<string>();
    await eachMap(repo, points, (_p, _i, map) => forEachHash(map, (hex) => needed.add(hex)), problems);
    report.restorePoints.checked = points.length;
    report.blockMaps.checked = points.reduce((n, p) => n + p.disks.length, 0);
    const sample = pick(needed, report.samplePercent);
    if (repo.format === 2) await rebuildIndexV2(repo, report);
    const { findings, counters, scanMs } = await scan(repo, codec, sample, opts);
    const refs = findings.length ? await whoNeeds(repo, points, new Set(findings.map((f) => f.hash))) : new Map();
    Object.assign(report, summarise(findings, counters, scanMs, needed.size));
    report.damagedBlocks = findings.map(({ detail, ...f }) => ({ ...f, message: detail, neededBy: refs.get(f.hash) ?? [] }));
    report.damagedObjects = problems.map((p) => ({ object: p.object, kind: p.kind, vm: p.vm, restorePoint: p.restorePoint, disk: p.disk, code: p.error.code, message: p.error.message }));
    await repairIndexes(repo, report);
    report.affectedPoints = affectedPoints(report.damagedBlocks, problems);
    report.restorePoints.damaged = report.affectedPoints.length;
    report.blockMaps.damaged = problems.filter((p) => p.kind === 'map').length;
    report.damagedBlocksObject = await recordFindings(repo, sample, findings);
    finish(report, t0);
    return report;
  } finally {
    await lock.release();
  }
}

async function scan(
  repo: Repository,
  codec: BlockCodec,
  sample: string[],
  opts: VerifyOptions,
): Promise<{ findings: BlockFinding[]; counters: CheckCounters; scanMs: number }> {
  // A health check reads the repository's index objects, not the local cache's copies.
  repo.blocks.useCache = false;
  await repo.blocks.load();
  const byPack = new Map<string, BlockToCheck[]>();
  const findings: BlockFinding[] = [];
  for (const hash of sample) {
    const at = repo.blocks.locate(hash);
    if (!at) {
      findings.push({ hash, pack: null, offset: null, reason: 'not-indexed', detail: `block ${hash} is in no pack of the repository` });
      continue;
    }
    let list = byPack.get(at.pack);
    if (!list) byPack.set(at.pack, (list = []));
    list.push({ hash, at });
  }
  const t = performance.now();
  const r = await checkBlocks(repo.backend, codec, byPack, { onProgress: (c) => opts.onProgress?.(c, sample.length), cipher: repo.cipher });
  r.counters.checked += findings.length;
  return { findings: [...findings, ...r.findings], counters: r.counters, scanMs: performance.now() - t };
}

/** Every hash, or each with probability p% (at least one when there is any). */
function pick(needed: Set<string>, percent: number): string[] {
  if (!(percent > 0 && percent <= 100)) throw new FerryError('CLI_USAGE', `sample must be more than 0% and at most 100%, not ${percent}%`);
  if (percent >= 100) return [...needed];
  const scale = 1_000_000;
  const out = [...needed].filter(() => randomInt(scale) < (percent / 100) * scale);
  if (out.length === 0 && needed.size) out.push([...needed][randomInt(needed.size)]);
  return out;
}

function summarise(findings: BlockFinding[], c: CheckCounters, scanMs: number, needed: number): Partial<VerifyReport> {
  const missing = findings.filter((f) => f.reason === 'pack-missing' || f.reason === 'not-indexed').length;
  return {
    blocks: { needed, checked: c.checked, ok: c.ok, damaged: findings.length - missing, missing },
    bytesRead: c.bytesRead,
    rawBytesVerified: c.rawBytes,
    throughputMiBps: scanMs > 0 ? Math.round((c.bytesRead / 1048576 / (scanMs / 1000)) * 10) / 10 : 0,
  };
}

function emptyReport(repo: Repository, samplePercent: number): VerifyReport {
  return {
    repository: repo.backend.location,
    status: 'ok',
    startedAt: new Date().toISOString(),
    durationMs: 0,
    samplePercent,
    restorePoints: { checked: 0, damaged: 0 },
    blockMaps: { checked: 0, damaged: 0 },
    blocks: { needed: 0, checked: 0, ok: 0, damaged: 0, missing: 0 },
    bytesRead: 0,
    rawBytesVerified: 0,
    throughputMiBps: 0,
    damagedBlocks: [],
    damagedObjects: [],
    repairedObjects: [],
    affectedPoints: [],
    damagedBlocksObject: null,
  };
}

/**
 * Damaged index objects: put back when the block store could rebuild them from the pack (the pack
 * still hashes to its id, so its trailer is the truth); reported as damage when it could not.
 */
async function repairIndexes(repo: Repository, report: VerifyReport): Promise<void> {
  for (const bad of repo.blocks.badIndexes) {
    if (repo.format === 2) continue; // `rebuildIndexV2` dealt with them before the scan
    if (bad.rebuilt) {
      await repo.backend.put(bad.key, encodeIndex(bad.packId, bad.rebuilt));
      report.repairedObjects.push({ object: bad.key, message: `rebuilt from the trailer of its pack (${bad.detail})` });
    } else {
      report.damagedObjects.push({ object: bad.key, kind: 'index', code: 'REPO_CORRUPT_OBJECT', message: `${bad.detail}; its pack is damaged or gone too, so its blocks count as missing` });
    }
  }
}

/**
 * Format 2: when an index object fails its checks, the packs no readable index object lists are
 * indexed again from their own trailers (`reindexUnlistedPacks`), the damaged objects are deleted
 * (unless the storage retains them) and the index is loaded again, so the scan finds their blocks.
 * Reported under `repairedObjects`; packs that fail their checks and damaged objects left in place
 * under `damagedObjects`.
 */
async function rebuildIndexV2(repo: Repository, report: VerifyReport): Promise<void> {
  repo.blocks.useCache = false;
  await repo.blocks.load();
  const bad = [...repo.blocks.badIndexes];
  if (bad.length === 0) return;
  const r = await reindexUnlistedPacks(repo.backend, repo.cipher, new Set(bad.map((b) => b.key)));
  const why = bad.map((b) => `${b.key}: ${b.detail}`).join('; ');
  if (r.key) report.repairedObjects.push({ object: r.key, message: `${r.packs.length} pack(s) indexed again from their trailers (${why})` });
  for (const f of r.failed) {
    report.damagedObjects.push({ object: `packs/${f.pack.slice(0, 2)}/${f.pack}`, kind: 'index', code: 'REPO_CORRUPT_OBJECT', message: `not indexed again: ${f.why}` });
  }
  for (const b of bad) {
    if (b.key === r.key) continue; // repaired in place: the same packs make the same object
    try {
      await repo.backend.delete(b.key);
    } catch (err) {
      if (!isFerryError(err, 'REPO_IMMUTABLE')) throw err;
      report.damagedObjects.push({ object: b.key, kind: 'index', code: 'REPO_CORRUPT_OBJECT', message: `${b.detail}; kept until its retain-until date (its packs are indexed again)` });
    }
  }
  repo.blocks.unload();
}

function finish(report: VerifyReport, t0: number): void {
  report.durationMs = Math.round(performance.now() - t0);
  const bad = report.damagedBlocks.length + report.damagedObjects.length;
  if (bad === 0) return;
  report.status = 'damaged';
  const first = report.damagedBlocks[0];
  const err = new FerryError(
    'VERIFY_DAMAGED',
    `${report.damagedBlocks.length} damaged or missing block(s) and ${report.damagedObjects.length} damaged manifest(s) or block map(s); ` +
      `${report.affectedPoints.length} restore point(s) affected`,
    first?.neededBy[0]
      ? { vm: first.neededBy[0].vm, disk: first.neededBy[0].disk, offset: first.neededBy[0].offsets[0], object: `block ${first.hash}` }
      : { object: report.damagedObjects[0]?.object },
  );
  report.error = { code: err.code, message: err.message, where: err.where };
}

