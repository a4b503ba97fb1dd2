import { randomBytes } from 'node:crypto';

/**
 * Restore point ids: the session's start in UTC to the millisecond, then a random suffix
 * (`20261203T182401123Z-02f6b5`). Ids made by one process for the current time strictly increase,
 * even within one millisecond; ids of different processes sort by their start time. Ids of format 1's first
 * releases have no milliseconds (`20261203T182401Z-02f6b5`) and sort as if made at millisecond 0.
 * Points are ordered by id, never by a field inside the manifest: a manifest dated in the future
 * cannot become `latest` for good.
 */
const ID = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})(\d{3})?Z-[0-9a-z]+$/;

let lastMs = 0;

export function newPointId(now = new Date()): string {
  let ms = now.getTime();
  // Later than the last id of this process, also within one millisecond or after the clock stepped
  // back a little. A time given far in the past (tests, imports) is taken as it is.
  if (ms <= lastMs && lastMs - ms < 1000) ms = lastMs + 1;
  lastMs = Math.max(lastMs, ms);
  const ts = new Date(ms).toISOString().replace(/[-:.]/g, '');
  return `${ts}-${randomBytes(3).toString('hex')}`;
}

/** The time (ms since the epoch) a point id encodes, or undefined when it is not a point id. */
export function pointIdTime(id: string): number | undefined {
  const m = ID.exec(id);
  if (!m) return undefined;
  const t = Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], m[7] ? +m[7] : 0);
  return Number.isNaN(t) ? undefined : t;
}

/** Creation order: by the time the ids encode, then by the ids themselves; non-ids last. */
export function comparePointIds(a: string, b: string): number {
  const ta = pointIdTime(a) ?? Infinity;
  const tb = pointIdTime(b) ?? Infinity;
  if (ta !== tb) return ta < tb ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}
