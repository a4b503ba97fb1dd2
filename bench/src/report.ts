import type { FixedCostResult } from './fixed-cost.js';
import { SCENARIOS, type Row, type Scenario } from './scenarios.js';

const MiB = 1024 * 1024;

/** A row with its ratios to the peers in the same scenario (Ferry's wall time / the peer's). */
export interface TableRow extends Row {
  ratios: Record<string, number>;
  runs: number;
}

/** Across passes, the run with the median wall time of each (tool, variant, scenario). */
export function medians(passes: Row[][]): Row[] {
  const groups = new Map<string, Row[]>();
  for (const rows of passes) {
    for (const r of rows) {
      const k = key(r);
      groups.set(k, [...(groups.get(k) ?? []), r]);
    }
  }
  return [...groups.values()].map((g) => {
    const sorted = [...g].sort((a, b) => a.wallMs - b.wallMs);
    return { ...sorted[Math.floor((sorted.length - 1) / 2)], runs: g.length } as Row;
  });
}

function key(r: Row): string {
  return `${r.tool}|${r.variant}|${r.scenario}`;
}

/** The peer rows Ferry's rows compare with: same scenario; the CT incremental against restic's second run. */
const COMPARE: Partial<Record<Scenario, { tool: string; scenario: Scenario }[]>> = {
  [SCENARIOS.full]: [{ tool: 'restic', scenario: SCENARIOS.full }, { tool: 'borg', scenario: SCENARIOS.full }],
  [SCENARIOS.second]: [{ tool: 'restic', scenario: SCENARIOS.second }, { tool: 'borg', scenario: SCENARIOS.second }],
  [SCENARIOS.cbt]: [{ tool: 'restic', scenario: SCENARIOS.second }, { tool: 'borg', scenario: SCENARIOS.second }],
  [SCENARIOS.cbtFull]: [{ tool: 'restic', scenario: SCENARIOS.full }, { tool: 'borg', scenario: SCENARIOS.full }],
  [SCENARIOS.restore]: [{ tool: 'restic', scenario: SCENARIOS.restore }, { tool: 'borg', scenario: SCENARIOS.restore }],
  [SCENARIOS.nbd]: [{ tool: 'nbdcopy', scenario: SCENARIOS.nbd }],
  [SCENARIOS.nbdTransport]: [{ tool: 'nbdcopy', scenario: SCENARIOS.nbd }],
  [SCENARIOS.serve]: [{ tool: 'nbdcopy', scenario: SCENARIOS.nbd }],
};

export function withRatios(rows: Row[]): TableRow[] {
  return rows.map((r) => {
    const ratios: Record<string, number> = {};
    if (r.tool === 'ferry') {
      for (const c of COMPARE[r.scenario] ?? []) {
        const peer = rows.find((p) => p.tool === c.tool && p.scenario === c.scenario);
        if (peer) ratios[c.tool] = r.wallMs / peer.wallMs;
      }
    }
    return { ...r, ratios, runs: (r as TableRow).runs ?? 1 };
  });
}

export interface Target {
  scenario: string;
  target: string;
  measured: string;
  met: boolean | null;
}

/**
 * The issue's targets, evaluated on this run's rows (null: a peer or scenario was missing). `fixed`:
 * the fixed-cost measurement (many runs after a warm-up), which judges the 1 MiB backup when present.
 */
export function targets(rows: TableRow[], changedBytes: number, fixed?: FixedCostResult): Target[] {
  const find = (tool: string, scenario: Scenario, variant?: string): TableRow | undefined =>
    rows.find((r) => r.tool === tool && r.scenario === scenario && (variant === undefined || r.variant === variant));
  const out: Target[] = [];
  const ratio = (a?: TableRow, b?: TableRow): number | undefined => (a && b ? a.wallMs / b.wallMs : undefined);
  const fmt = (x: number | undefined, unit = 'x'): string => (x === undefined ? 'n/a' : `${x.toFixed(2)}${unit}`);
  const add = (scenario: string, target: string, measured: string, met: boolean | undefined): void => {
    out.push({ scenario, target, measured, met: met ?? null });
  };

  const full = find('ferry', SCENARIOS.full, 'optimal');
  const rFull = ratio(full, find('restic', SCENARIOS.full));
  const bFull = ratio(full, find('borg', SCENARIOS.full));
  const borgFull = find('borg', SCENARIOS.full);
  const cpuX = full && borgFull ? full.cpuMs / borgFull.cpuMs : undefined;
  add(
    'full backup, optimal',
    "<= 0.35x restic, <= 0.7x borg (wall); CPU <= borg's",
    `${fmt(rFull)} restic, ${fmt(bFull)} borg; CPU ${fmt(cpuX)} borg's (${fmt(full && full.cpuMs / 1000, ' s')} vs ${fmt(borgFull && borgFull.cpuMs / 1000, ' s')})`,
    rFull === undefined || bFull === undefined || cpuX === undefined ? undefined : rFull <= 0.35 && bFull <= 0.7 && cpuX <= 1,
  );

  const size = (r?: TableRow): number | undefined => r?.repoBytes;
  const optSize = size(full);
  const highSize = size(find('ferry', SCENARIOS.full, 'high'));
  const borgSize = size(find('borg', SCENARIOS.full));
  const resticSize = size(find('restic', SCENARIOS.full));
  add(
    'repository size (after the full backup)',
    'optimal <= borg lz4; high <= restic',
    `optimal ${mibs(optSize)} vs borg ${mibs(borgSize)}; high ${mibs(highSize)} vs restic ${mibs(resticSize)}`,
    [optSize, highSize, borgSize, resticSize].some((x) => x === undefined) ? undefined : optSize! <= borgSize! && highSize! <= resticSize!,
  );

  const second = ratio(find('ferry', SCENARIOS.second, 'optimal'), find('restic', SCENARIOS.second));
  add('second run, 1% changed, no change tracking (optimal)', '<= 0.35x restic', fmt(second), second === undefined ? undefined : second <= 0.35);

  const cbtRow = find('ferry', SCENARIOS.cbt);
  const cbt = ratio(cbtRow, find('restic', SCENARIOS.second));
  const readX = cbtRow?.bytesRead !== undefined ? cbtRow.bytesRead / changedBytes : undefined;
  add(
    'incremental with change tracking, 1% changed',
    "<= 0.15x restic's second run; bytes read <= 1.5x changed",
    `${fmt(cbt)} restic; read ${fmt(readX)} the changed bytes`,
    cbt === undefined || readX === undefined ? undefined : cbt <= 0.15 && readX <= 1.5,
  );

  const restoreRow = find('ferry', SCENARIOS.restore, 'optimal');
  const restore = ratio(restoreRow, find('restic', SCENARIOS.restore));
  const sparse = restoreRow ? restoreRow.note === 'sparse output' && restoreRow.verified !== false : undefined;
  // The restic row is its restore followed by `sync` of the output (both durable; peers.ts).
  add('restore (optimal)', "<= 0.6x restic's restore + sync, output sparse", `${fmt(restore)}; ${restoreRow?.note ?? 'n/a'}${restoreRow?.verified ? ', content verified' : ''}`, restore === undefined ? undefined : restore <= 0.6 && sparse);
  const bigRestore = find('ferry', SCENARIOS.sparseRestore, 'optimal');
  const restoreRss = bigRestore && restoreRow ? bigRestore.peakRssMiB / restoreRow.peakRssMiB : undefined;
  add(
    'peak RSS, restore',
    '<= 256 MiB (process tree), 64 GiB within 10% of 2 GiB',
    `2 GiB ${restoreRow ? restoreRow.peakRssMiB.toFixed(0) : 'n/a'} MiB, 64 GiB ${bigRestore ? bigRestore.peakRssMiB.toFixed(0) : 'n/a'} MiB (${fmt(restoreRss)})`,
    !bigRestore || !restoreRow ? undefined : Math.max(bigRestore.peakRssMiB, restoreRow.peakRssMiB) <= 256 && Math.abs(restoreRss! - 1) <= 0.1,
  );

  const big = find('ferry', SCENARIOS.sparseFull, 'optimal');
  const bigX = ratio(big, full);
  add('64 GiB sparse image, same data', "<= 1.2x the 2 GiB image's time", fmt(bigX), bigX === undefined ? undefined : bigX <= 1.2);

  const ferryRows = rows.filter((r) => r.tool === 'ferry');
  const peak = Math.max(...ferryRows.map((r) => r.peakRssMiB));
  const rssX = big && full ? big.peakRssMiB / full.peakRssMiB : undefined;
  add(
    'peak RSS',
    '<= 256 MiB (process tree), 64 GiB within 10% of 2 GiB',
    `max ${peak.toFixed(0)} MiB (${ferryRows.find((r) => r.peakRssMiB === peak)?.variant} ${ferryRows.find((r) => r.peakRssMiB === peak)?.scenario}); 64 GiB/2 GiB ${fmt(rssX)}`,
    ferryRows.length === 0 ? undefined : peak <= 256 && (rssX === undefined || Math.abs(rssX - 1) <= 0.1),
  );

  // Throughput over the same disk by session time (start-up excluded: the services are resident);
  // CPU: the CLI's plus both services' during the backup, against the embedded run's.
  const embedded = find('ferry', SCENARIOS.remoteEmbedded);
  const remote = find('ferry', SCENARIOS.remote);
  const tputX = embedded?.sessionMs && remote?.sessionMs ? embedded.sessionMs / remote.sessionMs : undefined;
  const remoteCpuX = embedded && remote ? remote.cpuMs / embedded.cpuMs : undefined;
  add(
    'proxy + repository services on loopback',
    ">= 0.9x the embedded pipe's throughput, CPU within 10%",
    `${fmt(tputX)} the throughput, ${fmt(remoteCpuX)} the CPU`,
    tputX === undefined || remoteCpuX === undefined ? undefined : tputX >= 0.9 && remoteCpuX <= 1.1,
  );

  // The pass's single run of the 1 MiB backup is the first of its job: with caches of a previous
  // build it compiles the job schema's validator again. The fixed-cost case's median of repeated runs
  // is the cost of a run; the single run is shown beside it.
  const tiny = find('ferry', SCENARIOS.tiny, 'optimal');
  const tinyRuns = fixed?.figures.find((f) => f.name === 'full backup, 1 MiB image');
  const tinyMs = tinyRuns ? tinyRuns.wallMs.median : tiny?.wallMs;
  const tinyText = tinyRuns
    ? `${fmt(tinyRuns.wallMs.median / 1000, ' s')} (median of ${tinyRuns.runs})${tiny ? `; the pass's single run ${fmt(tiny.wallMs / 1000, ' s')}` : ''}`
    : fmt(tiny && tiny.wallMs / 1000, ' s');
  add('fixed cost: full backup of a 1 MiB image', '<= 0.35 s (wall)', tinyText, tinyMs === undefined ? undefined : tinyMs <= 350);

  // The read path is the transport reading the export (nbdcopy copies to null:): the transport-only
  // row's read time, connect to last byte; the process's wall (Node start-up) and a whole backup
  // with `compression: none` (hashing, packing, fsync'd writes) are shown beside it.
  const copy = find('nbdcopy', SCENARIOS.nbd);
  const alone = find('ferry', SCENARIOS.nbdTransport);
  const nbd = copy && alone?.readMs ? copy.wallMs / alone.readMs : undefined;
  const nbdWall = ratio(copy, alone);
  const nbdBackup = ratio(copy, find('ferry', SCENARIOS.nbd, 'none'));
  add(
    'NBD read path, compression none',
    ">= 1.0x nbdcopy's throughput",
    `${fmt(nbd)} of nbdcopy's throughput (transport read time; ${fmt(nbdWall)} by process wall time incl. Node start-up; a whole backup with compression none ${fmt(nbdBackup)})`,
    nbd === undefined ? undefined : nbd >= 1.0,
  );
  return out;
}

function mibs(n: number | undefined): string {
  return n === undefined ? 'n/a' : `${(n / MiB).toFixed(0)} MiB`;
}

export function printTable(head: string[], rows: (string | number)[][]): string {
  const cells = rows.map((r) => r.map(String));
  const w = head.map((h, i) => Math.max(h.length, ...cells.map((r) => r[i].length)));
  const line = (r: string[]): string => `| ${r.map((c, i) => c.padEnd(w[i])).join(' | ')} |`;
  const text = [line(head), line(w.map((x) => '-'.repeat(x))), ...cells.map(line)].join('\n');
  console.log(text + '\n');
  return text;
}

const f = (n: number | undefined, d = 2): string => (n === undefined || !Number.isFinite(n) ? '' : n.toFixed(d));

/** The main table (markdown, so docs/performance.md can take it as printed). */
export function mainTable(rows: TableRow[]): string {
  return printTable(
    ['tool', 'variant', 'scenario', 'wall s', 'session s', 'cpu s', 'peak RSS MiB', 'repo MiB', 'read MiB', 'x restic', 'x borg', 'x nbdcopy', 'notes'],
    rows.map((r) => [
      r.tool,
      r.variant,
      r.scenario,
      f(r.wallMs / 1000),
      r.sessionMs === undefined ? '' : f(r.sessionMs / 1000),
      f(r.cpuMs / 1000),
      f(r.peakRssMiB, 0),
      r.repoBytes === undefined ? '' : f(r.repoBytes / MiB, 0),
      r.bytesRead === undefined ? '' : f(r.bytesRead / MiB, 0),
      f(r.ratios.restic),
      f(r.ratios.borg),
      f(r.ratios.nbdcopy),
      [r.note, r.outputBytes !== undefined ? `output ${f(r.outputBytes / MiB, 0)} MiB on disk` : '', r.verified === true ? 'verified' : r.verified === false ? 'MISMATCH' : '']
        .filter(Boolean)
        .join('; '),
    ]),
  );
}

/** Ferry's stage busy shares per backup row, and the bottleneck the session report names. */
export function stageTable(rows: TableRow[]): string {
  const backups = rows.filter((r) => r.tool === 'ferry' && r.stages);
  const names = [...new Set(backups.flatMap((r) => r.stages!.map((s) => s.stage)))];
  return printTable(
    ['variant', 'scenario', ...names.map((n) => `${n} %`), 'bottleneck'],
    backups.map((r) => [
      r.variant,
      r.scenario,
      ...names.map((n) => {
        const s = r.stages!.find((x) => x.stage === n);
        return s ? (s.busyShare * 100).toFixed(0) : '';
      }),
      r.bottleneck ?? '',
    ]),
  );
}

export function targetTable(ts: Target[]): string {
  return printTable(
    ['scenario', 'target', 'measured', 'met'],
    ts.map((t) => [t.scenario, t.target, t.measured, t.met === null ? 'n/a' : t.met ? 'met' : 'MISSED']),
  );
}
