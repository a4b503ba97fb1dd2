import { FerryError } from '@ferry/core/errors';

/**
 * Exit codes: 0 success, 1 a session or disk failed, 2 bad input (job file, plugins, command line),
 * 130 stopped by Ctrl-C/SIGTERM (after cleaning up).
 */
export const EXIT = { ok: 0, failed: 1, badInput: 2, interrupted: 130 } as const;

const BAD_INPUT = new Set<string>([
  'JOB_FILE_NOT_FOUND',
  'JOB_YAML_SYNTAX',
  'JOB_INVALID',
  'JOB_PATH_NOT_FOUND',
  'PLUGIN_MANIFEST_INVALID',
  'PLUGIN_API_INCOMPATIBLE',
  'PLUGIN_DUPLICATE',
  'PLUGIN_NOT_FOUND',
  'PLUGIN_CONTRACT',
  'PLUGIN_LOAD_FAILED',
  'CLI_USAGE',
  'REPO_POINT_NOT_FOUND',
  'RESTORE_NOT_FOUND',
  'RESTORE_TARGET_EXISTS',
  'DISK_PATH_NOT_FOUND',
  // what the admin typed or configured, not a failed session: a passphrase, or settings the repository was made with
  'REPO_PASSPHRASE_REQUIRED',
  'REPO_WRONG_PASSPHRASE',
  'REPO_SETTINGS_MISMATCH',
  // asked to delete or replace what must stay
  'REPO_IMMUTABLE',
]);

/** Prints an error (JSON on stdout with --json, a line on stderr otherwise) and returns the exit code. */
export function reportError(err: unknown, json: boolean): number {
  const fe = err instanceof FerryError ? err : undefined;
  if (json) {
    const body = fe ? fe.toJSON() : { code: 'INTERNAL', message: String((err as Error)?.stack ?? err), where: {} };
    process.stdout.write(JSON.stringify({ error: body }, null, 2) + '\n');
  } else {
    process.stderr.write(`ferry: ${fe ? fe.message : `INTERNAL: ${(err as Error)?.stack ?? String(err)}`}\n`);
  }
  return fe && BAD_INPUT.has(fe.code) ? EXIT.badInput : EXIT.failed;
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

/** Renders rows as an aligned text table. */
export function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: string[]): string => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n') + '\n';
}
