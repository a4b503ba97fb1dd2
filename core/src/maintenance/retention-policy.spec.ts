import { expect } from 'chai';
import { applyRetention, isoWeek, type RetentionCandidate, type RetentionPolicy } from './retention-policy.js';

const DAY = 86_400_000;

/** The GFS set of daily points from `first` to `last`, computed from calendar facts alone. */
function expectedSet(first: number, last: number, p: Required<RetentionPolicy>): Set<string> {
  const days: Date[] = [];
  for (let t = first; t <= last; t += DAY) days.push(new Date(t));
  const newestFirst = days.reverse();
  const lastOf = (same: (a: Date, b: Date) => boolean): Date[] =>
    newestFirst.filter((d, i) => i === 0 || !same(d, new Date(d.getTime() + DAY)));
  const week = (_a: Date, b: Date): boolean => b.getUTCDay() !== 1; // the next day is not a Monday
  const month = (a: Date, b: Date): boolean => a.getUTCMonth() === b.getUTCMonth();
  const year = (a: Date, b: Date): boolean => a.getUTCFullYear() === b.getUTCFullYear();
  return new Set(
    [
      ...newestFirst.slice(0, p.restorePoints),
      ...lastOf(week).slice(0, p.weekly),
      ...lastOf(month).slice(0, p.monthly),
      ...lastOf(year).slice(0, p.yearly),
    ].map((d) => d.toISOString()),
  );
}

describe('retention policy (GFS)', function () {
  it('numbers ISO weeks as ISO 8601 does, across year ends', function () {
    expect(isoWeek(new Date('2024-12-30T10:00:00Z'))).to.equal('2025-W01');
    expect(isoWeek(new Date('2021-01-03T23:59:59Z'))).to.equal('2020-W53');
    expect(isoWeek(new Date('2026-01-01T00:00:00Z'))).to.equal('2026-W01');
    expect(isoWeek(new Date('2026-12-31T00:00:00Z'))).to.equal('2026-W53');
    expect(isoWeek(new Date('2026-11-25T19:44:05Z'))).to.equal('2026-W48');
  });

  it('a simulated clock over 400 daily runs, pruning after each, keeps exactly the GFS set every day', function () {
    const policy = { restorePoints: 14, weekly: 4, monthly: 12, yearly: 3 };
    const start = Date.UTC(2025, 10, 20, 2, 0, 0); // 20 Nov 2025, 02:00 UTC: the run crosses two year ends' worth of periods
    let chain: RetentionCandidate[] = [];
    for (let day = 0; day < 400; day++) {
      const now = new Date(start + day * DAY).toISOString();
      chain.push({ id: `p${day}`, createdAt: now });
      const decisions = applyRetention(chain, policy);
      chain = decisions.filter((d) => d.keep).map(({ id, createdAt }) => ({ id, createdAt }));
      const kept = new Set(chain.map((p) => p.createdAt));
      expect([...kept].sort(), `after run ${day} (${now})`).to.deep.equal([...expectedSet(start, start + day * DAY, policy)].sort());
    }
    // 14 newest + up to 4 weekly + 12 monthly + 2 yearly, minus overlaps
    expect(chain.length).to.be.within(20, 32);
  });

  it('says why each point stays or goes', function () {
    const pts = ['2026-03-01', '2026-03-02', '2026-03-09', '2026-03-10'].map((d, i) => ({ id: `p${i}`, createdAt: `${d}T01:00:00.000Z` }));
    const d = applyRetention(pts, { restorePoints: 1, weekly: 1 });
    expect(d.map((x) => [x.id, x.keep])).to.deep.equal([['p3', true], ['p2', false], ['p1', false], ['p0', false]]);
    expect(d[0].reasons).to.deep.equal(['one of the newest 1 restore points', 'weekly: last point of week 2026-W11']);
    expect(d[1].reasons).to.include('not the last point of week 2026-W11 (that is p3)');
    expect(d[2].reasons).to.include('week 2026-W10 is older than the newest 1 weeks with points');
  });

  it('always keeps the newest point and is idempotent', function () {
    const pts = Array.from({ length: 30 }, (_, i) => ({ id: `x${i}`, createdAt: new Date(Date.UTC(2026, 0, 1) + i * 3600_000).toISOString() }));
    const once = applyRetention(pts, { restorePoints: 0 }).filter((x) => x.keep);
    expect(once.map((x) => x.id)).to.deep.equal(['x29']);
    const twice = applyRetention(once, { restorePoints: 0 });
    expect(twice.every((x) => x.keep)).to.equal(true);
  });
});
