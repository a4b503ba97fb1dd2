import { randomBytes } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import type { RestorePoint } from '../repository/repository.js';

/**
 * Where a writable export keeps its overlay when `--overlay` is not given: a new folder per run
 * under `$XDG_CACHE_HOME/ferry/overlays` (default `~/.cache/ferry/overlays`), never inside the
 * repository. It is kept after the export stops, so its writes can be served again (`--overlay`)
 * or committed (`--commit-to`); deleting it drops them. With several disks the folder holds one
 * overlay folder per disk.
 */
export function defaultOverlayDir(job: string, point: RestorePoint, disk: string, several: boolean): string {
  const cache = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  const safe = (s: string): string => s.replace(/[^A-Za-z0-9._-]/g, '_');
  const run = `${safe(job)}-${safe(point.vm)}-${point.id}-${randomBytes(3).toString('hex')}`;
  return several ? path.join(cache, 'ferry', 'overlays', run, safe(disk)) : path.join(cache, 'ferry', 'overlays', `${run}-${safe(disk)}`);
}
