import type { DiskImage } from '../restore-access/disk-image.js';
import type { JobRuntime } from '../session/job-runtime.js';
import { openRestoreSink, withTargetState, type RestoreSink } from '../session/restore-sink.js';
import { OverlayImage } from './overlay-image.js';

export interface CommitOptions {
  vm: string;
  disk: string;
  /** File, block device, or a network target a transport writes (`nbd://...`). */
  to: string;
  /** Overwrite an existing file or a block device (as `ferry restore --force`). */
  force?: boolean;
  onProgress?: (doneBytes: number, sizeBytes: number) => void;
  /** Called before each pass; `final`: the pass that holds writes back (called before they are held). */
  onPass?: (pass: number, final: boolean) => void;
}

export interface CommitReport {
  vm: string;
  disk: string;
  to: string;
  sizeBytes: number;
  bytesWritten: number;
  zeroBytes: number;
  /** Copy passes: the whole view, then the ranges written meanwhile, the last with writes held. */
  passes: number;
  durationMs: number;
}

/** Bytes copied per step and per dirty-tracking unit. */
const UNIT = 1024 * 1024;
const LANES = 4;
/** Passes over ranges written meanwhile before the last one holds writes back. */
const MAX_LIVE_PASSES = 4;
/** Dirty units few enough to copy with writes held back. */
const FINAL_UNITS = 64;

/**
 * `--commit-to`: copies the served view (the point with the overlay's writes) to a target while the
 * export keeps serving, the "migrate back" step. The first pass copies everything; writes that land
 * meanwhile mark their ranges, which later passes copy again; the last pass holds writes back (they
 * wait, they are not refused) while it copies what is left, so the target equals the view as it
 * stood at the end. Writes after that are in the overlay only. Targets and `force` follow
 * `ferry restore` (restore sinks).
 */
export async function commitView(rt: JobRuntime, image: DiskImage, opts: CommitOptions): Promise<CommitReport> {
  const t0 = performance.now();
  const size = image.size;
  const report: CommitReport = { vm: opts.vm, disk: opts.disk, to: opts.to, sizeBytes: size, bytesWritten: 0, zeroBytes: 0, passes: 0, durationMs: 0 };
  const overlay = image instanceof OverlayImage ? image : undefined;
  const dirty = new Set<number>();
  const watch = (offset: number, length: number): void => {
    for (let u = Math.floor(offset / UNIT); u * UNIT < offset + length; u++) dirty.add(u);
  };
  overlay?.watchers.add(watch);
  const sink = await openRestoreSink(rt, opts.to, size, opts.disk, { force: opts.force });
  report.to = sink.label;
  try {
    let done = 0;
    const copy = async (units: number[], again: boolean): Promise<void> => {
      let next = 0;
      const lane = async (): Promise<void> => {
        while (next < units.length) {
          const u = units[next++]!;
          const n = await copyUnit(image, sink, u, again, report);
          if (!again) opts.onProgress?.((done += n), size);
        }
      };
      await Promise.all(Array.from({ length: LANES }, lane));
      report.passes++;
    };
    opts.onPass?.(1, false);
    await copy(
      Array.from({ length: Math.ceil(size / UNIT) }, (_, i) => i),
      false,
    );
    for (let pass = 0; overlay && dirty.size > FINAL_UNITS && pass < MAX_LIVE_PASSES; pass++) {
      opts.onPass?.(report.passes + 1, false);
      await copy(take(dirty), true);
    }
    if (overlay && dirty.size) {
      opts.onPass?.(report.passes + 1, true);
      await overlay.exclusive(() => copy(take(dirty), true));
    }
    await sink.finish(true);
  } catch (err) {
    throw withTargetState(err, await sink.finish(false).catch(() => undefined));
  } finally {
    overlay?.watchers.delete(watch);
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

function take(dirty: Set<number>): number[] {
  const units = [...dirty].sort((a, b) => a - b);
  dirty.clear();
  return units;
}

/**
 * One unit: data ranges written, zero ranges as holes on a fresh copy; on a later pass zeros are
 * written (the target may hold data there from the first pass).
 */
async function copyUnit(image: DiskImage, sink: RestoreSink, u: number, again: boolean, report: CommitReport): Promise<number> {
  const start = u * UNIT;
  const length = Math.min(UNIT, image.size - start);
  for (const a of image.allocation(start, length)) {
    if (a.zero && !again) {
      await sink.zero(a.offset, a.length);
      report.zeroBytes += a.length;
    } else {
      const data = a.zero ? Buffer.alloc(a.length) : await image.read(a.offset, a.length);
      await sink.write(a.offset, data);
      report.bytesWritten += a.length;
    }
  }
  return length;
}
