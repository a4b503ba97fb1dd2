import type { Extent } from '@ferry/core/plugin';

/** Files Windows keeps only for the running system: their contents are never needed in a backup. */
export const SKIPPED_FILES = ['pagefile.sys', 'swapfile.sys', 'hiberfil.sys'] as const;

/**
 * One PowerShell script printing, as JSON, the partitions with a drive letter (`Get-Partition`:
 * DiskNumber, Offset in bytes from the start of the disk), which of `SKIPPED_FILES` each holds in its
 * root, and the disks (`Get-Disk`: Number, SerialNumber, Size), per the Storage module's docs.
 */
export const LAYOUT_SCRIPT = [
  `$names = @(${SKIPPED_FILES.map((f) => `'${f}'`).join(', ')})`,
  '$parts = @(Get-Partition | Where-Object { $_.DriveLetter } | ForEach-Object {',
  '  $l = [string]$_.DriveLetter',
  "  $files = @($names | Where-Object { Test-Path -LiteralPath ($l + ':\\' + $_) -PathType Leaf })",
  '  [pscustomobject]@{ DriveLetter = $l; DiskNumber = $_.DiskNumber; Offset = $_.Offset; Files = $files }',
  '})',
  '$disks = @(Get-Disk | Select-Object Number, SerialNumber, Size)',
  '[pscustomobject]@{ Partitions = $parts; Disks = $disks } | ConvertTo-Json -Depth 4 -Compress',
].join('\n');

export interface GuestLayout {
  Partitions: { DriveLetter: string; DiskNumber: number; Offset: number; Files: string[] | string | null }[];
  Disks: { Number: number; SerialNumber: string | null; Size: number }[];
}

/** ConvertTo-Json writes a one-item array as the item itself: always a list. */
function list<T>(v: T | T[] | null | undefined): T[] {
  return v === null || v === undefined ? [] : Array.isArray(v) ? v : [v];
}

export function parseLayout(text: string): GuestLayout {
  const raw = JSON.parse(text.trim()) as GuestLayout;
  return {
    Partitions: list(raw.Partitions).map((p) => ({ ...p, Files: list(p.Files) })),
    Disks: list(raw.Disks),
  };
}

/**
 * The `fsutil` calls for the skipped files on one disk's partitions, each preceded by a marker
 * line: `fsutil fsinfo ntfsinfo X:` (the cluster size) and `fsutil file queryextents X:\FILE` (its
 * runs of clusters), per fsutil's docs.
 */
export function extentsScript(layout: GuestLayout, diskNumber: number): string {
  const lines: string[] = [];
  for (const p of layout.Partitions.filter((x) => x.DiskNumber === diskNumber && (x.Files as string[]).length)) {
    lines.push(`Write-Output '### ntfsinfo ${p.DriveLetter}:'`, `fsutil fsinfo ntfsinfo ${p.DriveLetter}:`);
    for (const f of p.Files as string[]) lines.push(`Write-Output '### file ${p.DriveLetter}:\\${f}'`, `fsutil file queryextents ${p.DriveLetter}:\\${f}`);
  }
  return lines.join('\n');
}

/** One allocated run of a file: `clusters` clusters from logical cluster `lcn` of its volume. */
interface Run {
  lcn: bigint;
  clusters: bigint;
}

/**
 * Lines of `fsutil file queryextents`: `VCN: 0x0  Clusters: 0x40000  LCN: 0x1a3f00`. An LCN of
 * -1 (`0xffffffffffffffff`, a sparse or virtual run) has no clusters on the volume and is left out.
 */
export function parseQueryExtents(text: string): Run[] {
  const runs: Run[] = [];
  for (const m of text.matchAll(/VCN:\s*(0x[0-9a-fA-F]+)\s+Clusters:\s*(0x[0-9a-fA-F]+)\s+LCN:\s*(0x[0-9a-fA-F]+)/g)) {
    if (BigInt(m[3]) === 0xffffffffffffffffn) continue;
    runs.push({ lcn: BigInt(m[3]), clusters: BigInt(m[2]) });
  }
  return runs;
}

/** `Bytes Per Cluster : 4096` (newer builds add `(4 KB)`) of `fsutil fsinfo ntfsinfo`. */
export function parseClusterSize(text: string): number | undefined {
  const m = /Bytes Per Cluster\s*:\s*([\d,]+)/i.exec(text);
  return m ? Number(m[1].replace(/,/g, '')) : undefined;
}

/**
 * The disk ranges of the skipped files from the marked output of `extentsScript`: each run at
 * partition offset + LCN × cluster size, sorted and merged. A file whose output has no runs or a
 * volume without a cluster size contributes nothing (never a guess: a wrong range would lose data).
 */
export function diskExtents(output: string, layout: GuestLayout, diskNumber: number): { extents: Extent[]; files: string[] } {
  const offsets = new Map(layout.Partitions.filter((p) => p.DiskNumber === diskNumber).map((p) => [p.DriveLetter.toUpperCase(), p.Offset]));
  const clusterSize = new Map<string, number>();
  const extents: Extent[] = [];
  const files: string[] = [];
  for (const section of output.split(/^### /m).slice(1)) {
    const nl = section.indexOf('\n');
    const head = (nl < 0 ? section : section.slice(0, nl)).trim();
    const body = nl < 0 ? '' : section.slice(nl + 1);
    let m: RegExpExecArray | null;
    if ((m = /^ntfsinfo ([A-Za-z]):$/.exec(head))) {
      const size = parseClusterSize(body);
      if (size) clusterSize.set(m[1].toUpperCase(), size);
    } else if ((m = /^file ([A-Za-z]):\\(.+)$/.exec(head))) {
      const letter = m[1].toUpperCase();
      const size = clusterSize.get(letter);
      const base = offsets.get(letter);
      const runs = parseQueryExtents(body);
      if (!size || base === undefined || !runs.length) continue;
      files.push(`${letter}:\\${m[2]}`);
      for (const r of runs) extents.push({ offset: base + Number(r.lcn) * size, length: Number(r.clusters) * size });
    }
  }
  return { extents: mergeExtents(extents), files };
}

export function mergeExtents(extents: Extent[]): Extent[] {
  const sorted = [...extents].sort((a, b) => a.offset - b.offset);
  const out: Extent[] = [];
  for (const e of sorted) {
    const last = out[out.length - 1];
    if (last && e.offset <= last.offset + last.length) last.length = Math.max(last.length, e.offset + e.length - last.offset);
    else out.push({ ...e });
  }
  return out;
}
