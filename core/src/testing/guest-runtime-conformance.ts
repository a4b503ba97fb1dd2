import assert from 'node:assert/strict';
import type { GuestOptions, GuestRuntime, GuestSession, GuestStepResult } from '../contracts/guest-runtime.js';
import { skipBecause, skipUnlessTools } from './test-skips.js';
import type { ConformanceOptions } from './transport-conformance.js';

/** What the suite needs besides the runtime: a guest to talk to and a way to look at it. */
export interface GuestRuntimeHarness {
  runtime: GuestRuntime;
  /** Options for `connect` that reach the harness's guest (a short `timeoutSeconds`, e.g. 3, keeps the watchdog case quick). */
  options: GuestOptions;
  /**
   * Whether the guest's file systems named in `options` are frozen now, seen from outside the
   * runtime (a probe write, the agent's `guest-fsfreeze-status`, the simulator's state). Must not
   * wait for a thaw.
   */
  isFrozen(): Promise<boolean>;
  /**
   * Makes the session's connection go away without `thaw` or `close`, as when the backup server is
   * killed. Missing: the watchdog case is skipped.
   */
  abandon?(session: GuestSession): Promise<void>;
  cleanup?(): Promise<void>;
}

/**
 * The conformance suite every guest runtime runs (in-tree and third-party), against a real guest or
 * a faithful simulator: `connect` gives a session with `label`, `freeze`, `thaw` and `close`;
 * `freeze` leaves the guest frozen and reports how many file systems; `thaw` thaws, and does not
 * throw when nothing is frozen or when called twice; step results have the documented shape;
 * `close` may be called twice; `skipExtents`, if offered, gives ordered, non-overlapping ranges; and
 * the watchdog thaws a guest whose backup server vanished within `timeoutSeconds` (plus a grace of
 * 5 s). `create` starts the guest (or simulator) and builds the runtime as a job would.
 */
export function runGuestRuntimeConformance(
  name: string,
  create: () => Promise<GuestRuntimeHarness>,
  options: ConformanceOptions & { skipReason?: () => string | undefined } = {},
): void {
  describe(`guest-runtime conformance: ${name}`, function () {
    this.timeout(60_000);
    let h: GuestRuntimeHarness;

    before(async function () {
      if (options.needs) skipUnlessTools(this, options.needs);
      const why = options.skipReason?.();
      if (why) skipBecause(this, why);
      h = await create();
    });
    after(async () => h?.cleanup?.());

    async function withSession(fn: (s: GuestSession) => Promise<void>): Promise<void> {
      const s = await h.runtime.connect('conformance-vm', h.options);
      try {
        await fn(s);
      } finally {
        await s.thaw().catch(() => undefined);
        await s.close();
      }
    }

    it('connect gives a session with label, freeze, thaw and close', async function () {
      await withSession(async (s) => {
        assert.equal(typeof s.label, 'string');
        assert.ok(s.label.length > 0, 'label is empty');
        for (const m of ['freeze', 'thaw', 'close'] as const) assert.equal(typeof s[m], 'function', `no ${m}()`);
      });
    });

    it('freeze freezes and says how many; thaw thaws', async function () {
      await withSession(async (s) => {
        assert.equal(await h.isFrozen(), false, 'frozen before freeze');
        const r = await s.freeze();
        checkResult(r);
        assert.ok(Number.isInteger(r.frozen) && r.frozen >= 1, `frozen: ${String(r.frozen)}`);
        assert.equal(await h.isFrozen(), true, 'not frozen after freeze');
        checkResult(await s.thaw());
        assert.equal(await h.isFrozen(), false, 'still frozen after thaw');
      });
    });

    it('thaw does not throw when nothing is frozen, nor a second time', async function () {
      await withSession(async (s) => {
        checkResult(await s.thaw());
        await s.freeze();
        await s.thaw();
        checkResult(await s.thaw());
        assert.equal(await h.isFrozen(), false);
      });
    });

    it('the optional steps resolve results of the documented shape', async function () {
      await withSession(async (s) => {
        if (s.preFreeze) checkResult(await s.preFreeze());
        if (s.postThaw) checkResult(await s.postThaw());
        if (s.afterBackup) checkResult(await s.afterBackup());
      });
    });

    it('close may be called twice', async function () {
      const s = await h.runtime.connect('conformance-vm', h.options);
      await s.close();
      await s.close();
    });

    it('skipExtents gives ordered ranges without overlap', async function () {
      await withSession(async (s) => {
        if (!s.skipExtents) skipBecause(this, `${name} offers no skipExtents`);
        const res = await s.skipExtents!({ name: 'disk0', size: 64 * 1024 * 1024 * 1024 });
        const got = Array.isArray(res) ? res : res.extents;
        assert.ok(Array.isArray(got), 'skipExtents resolves ranges, or { extents, warnings }');
        if (!Array.isArray(res)) for (const w of res.warnings ?? []) assert.equal(typeof w, 'string');
        let end = 0;
        for (const e of got) {
          assert.ok(Number.isSafeInteger(e.offset) && Number.isSafeInteger(e.length) && e.length > 0, JSON.stringify(e));
          assert.ok(e.offset >= end, `ranges out of order or overlapping at ${e.offset}`);
          end = e.offset + e.length;
        }
      });
    });

    it('the watchdog thaws a guest whose backup server went away', async function () {
      if (!h.abandon) skipBecause(this, 'the harness cannot abandon a session');
      const s = await h.runtime.connect('conformance-vm', h.options);
      await s.freeze();
      assert.equal(await h.isFrozen(), true);
      await h.abandon!(s);
      const deadline = Date.now() + (h.options.timeoutSeconds + 5) * 1000;
      let frozen = true;
      while (frozen && Date.now() < deadline) {
        await new Promise((r) => setTimeout(r, 250));
        frozen = await h.isFrozen();
      }
      assert.equal(frozen, false, `still frozen ${h.options.timeoutSeconds + 5} s after the server went away`);
    });
  });
}

function checkResult(r: GuestStepResult | undefined): void {
  assert.ok(r !== null && typeof r === 'object', `a step resolved ${String(r)}, not a result object`);
  if (r.detail !== undefined) assert.equal(typeof r.detail, 'string');
  for (const a of r.applications ?? []) {
    assert.equal(typeof a.name, 'string');
    assert.ok(['success', 'failed', 'skipped'].includes(a.status), `application status ${a.status}`);
    assert.equal(typeof a.method, 'string');
  }
  for (const sc of r.scripts ?? []) {
    assert.equal(typeof sc.script, 'string');
    assert.ok(sc.exitCode === null || Number.isInteger(sc.exitCode));
    assert.ok(Buffer.byteLength(sc.output) <= 4096, 'script output over 4 KiB');
  }
  for (const w of r.warnings ?? []) assert.equal(typeof w, 'string');
}
