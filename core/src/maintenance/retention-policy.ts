import { pointIdTime } from '../repository/point-id.js';

/**
 * Retention with grandfather-father-son (GFS) periods, as a pure function of the points and the
 * policy (no clock, no repository), so it can be tested over years of simulated runs.
 *
 * A point is kept when it is one of the newest `restorePoints`, or when it is the last point of an
 * ISO week, calendar month or calendar year that is among the newest `weekly` / `monthly` / `yearly`
 * periods that hold points. Periods are taken in UTC, so a repository shared by hosts in different
 * time zones keeps the same points whoever prunes it. The period that is still running counts: its
 * last point so far is its point until a newer one replaces it.
 */
export interface RetentionPolicy {
  /** The newest N restore points are kept, whatever their dates (at least 1). */
  restorePoints: number;
  weekly?: number;
  monthly?: number;
  yearly?: number;
}

export interface RetentionCandidate {
  id: string;
  /**
   * ISO time the point was created: used only when the id is not a point id that encodes its time
   * (`point-id.ts`).
   */
  createdAt: string;
}

export interface RetentionDecision extends RetentionCandidate {
  keep: boolean;
  /** Why it is kept (every rule that keeps it), or why no rule keeps it. */
  reasons: string[];
}

type PeriodKind = 'weekly' | 'monthly' | 'yearly';
const PERIOD_NAMES: Record<PeriodKind, string> = { weekly: 'week', monthly: 'month', yearly: 'year' };

/** Decisions for one chain (one VM of one job), newest first. */
export function applyRetention(points: readonly RetentionCandidate[], policy: RetentionPolicy): RetentionDecision[] {
  // Restore points are ordered and dated by their ids (the session start), not by a manifest field.
  const timeOf = (p: RetentionCandidate): number => pointIdTime(p.id) ?? Date.parse(p.createdAt);
  const newest = [...points].sort((a, b) => timeOf(b) - timeOf(a) || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0));
  const keep = newest.map((): string[] => []);
  const why = newest.map((): string[] => []);
  const n = Math.max(1, policy.restorePoints);
  newest.forEach((_p, i) => (i < n ? keep[i].push(`one of the newest ${n} restore points`) : why[i].push(`not among the newest ${n} restore points`)));
  for (const kind of ['weekly', 'monthly', 'yearly'] as const) {
    const count = policy[kind] ?? 0;
    if (count <= 0) continue;
    const owner = new Map<string, string>();
    newest.forEach((p, i) => {
      const period = periodOf(kind, new Date(timeOf(p)));
      const name = `${PERIOD_NAMES[kind]} ${period}`;
      if (owner.has(period)) {
        why[i].push(`not the last point of ${name} (that is ${owner.get(period)})`);
        return;
      }
      owner.set(period, p.id);
      if (owner.size <= count) keep[i].push(`${kind}: last point of ${name}`);
      else why[i].push(`${name} is older than the newest ${count} ${PERIOD_NAMES[kind]}s with points`);
    });
  }
  return newest.map((p, i) => ({ id: p.id, createdAt: p.createdAt, keep: keep[i].length > 0, reasons: keep[i].length ? keep[i] : why[i] }));
}

/** `2026-W47`, `2026-11` or `2026`, in UTC. */
export function periodOf(kind: PeriodKind, d: Date): string {
  if (kind === 'monthly') return `${d.getUTCFullYear()}-${String(d.getUTCMonth() + 1).padStart(2, '0')}`;
  if (kind === 'yearly') return String(d.getUTCFullYear());
  return isoWeek(d);
}

/** ISO 8601 week of a UTC date: weeks start on Monday; week 1 holds the year's first Thursday. */
export function isoWeek(d: Date): string {
  const day = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const weekday = day.getUTCDay() || 7; // Monday 1 .. Sunday 7
  day.setUTCDate(day.getUTCDate() + 4 - weekday); // the Thursday of this week decides the year
  const year = day.getUTCFullYear();
  const week = Math.ceil(((day.getTime() - Date.UTC(year, 0, 1)) / 86_400_000 + 1) / 7);
  return `${year}-W${String(week).padStart(2, '0')}`;
}
