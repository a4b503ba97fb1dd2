import { spawnSync } from 'node:child_process';

/**
 * The one way a Ferry spec skips. A missing tool skips on a developer's machine but fails in CI,
 * where `scripts/ensure-debian-packages.sh` installs every tool the tests use: a broken install
 * must not pass as a run with a few skips. Any other reason (not root, not Linux, a capability
 * a plugin does not offer) skips everywhere; mocha counts each skipped case in the closing line.
 */

/** Tool name → the Debian package that ships it, e.g. `{ 'qemu-nbd': 'qemu-utils' }`. */
export type ToolPackages = Record<string, string>;

/** True when `tool` is on PATH. */
export function hasTool(tool: string): boolean {
  return spawnSync('sh', ['-c', 'command -v "$1"', 'sh', tool], { stdio: 'ignore' }).status === 0;
}

/**
 * True where a missing tool is a failure: `CI` is set (not `false` or `0`), we run as root, and
 * apt-get is there, which is where `npm test` installs the Debian packages before running.
 */
export function toolsRequired(): boolean {
  const ci = process.env.CI;
  return Boolean(ci) && ci !== 'false' && ci !== '0' && process.getuid?.() === 0 && hasTool('apt-get');
}

/**
 * Skips the current test or hook (all cases of the suite, for a `before` hook) when one of `tools`
 * is not on PATH, naming each tool and its Debian package; under CI (see `toolsRequired`) throws
 * instead, so the test fails with the same words.
 */
export function skipUnlessTools(ctx: Mocha.Context, tools: ToolPackages): void {
  skipForMissingTools(ctx, Object.fromEntries(Object.entries(tools).filter(([tool]) => !hasTool(tool))));
}

/** As `skipUnlessTools`, for callers that found the missing tools themselves (e.g. also in sbin). */
export function skipForMissingTools(ctx: Mocha.Context, missing: ToolPackages): void {
  const names = Object.entries(missing).map(([tool, pkg]) => `${tool} (Debian package ${pkg})`);
  if (names.length === 0) return;
  const what = `${names.join(', ')} not installed`;
  if (toolsRequired()) {
    throw new Error(`${what}: under CI as root with apt-get, scripts/ensure-debian-packages.sh installs it, so this test fails instead of skipping`);
  }
  skipBecause(ctx, what);
}

/** Skips the current test or hook for a reason that is not a missing tool; it skips under CI too. */
export function skipBecause(ctx: Mocha.Context, reason: string): never {
  console.warn(`      skipped: ${reason}`);
  ctx.skip();
}
