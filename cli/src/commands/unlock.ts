import type { CommandModule } from 'yargs';
import { FerryError, LOCKS_PREFIX, listLocks, type RepositoryBackend } from '@ferry/core';
import { EXIT, printJson, table } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  job?: string;
  repository?: string;
  passphraseFile?: string;
  force?: string;
  json: boolean;
}

/** One lock as `ferry unlock --json` prints it. */
interface LockRow {
  id: string;
  operation: string | null;
  vms: string[];
  job: string | null;
  host: string | null;
  pid: number | null;
  startedAt: string | null;
  heartbeatAt: string | null;
  command: string | null;
  stale: boolean;
  staleReason: string | null;
  removed: boolean;
}

export function unlockCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.unlock,
    builder: (y) =>
      y
        .positional('job', { type: 'string', describe: 'job file (YAML)' })
        .option('repository', TARGET_OPTIONS.repository)
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('force', { type: 'string', describe: 'also remove this live lock (its holder then stops before committing anything)' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON on stdout' }) as never,
    handler: async (args) => {
      // Lock objects are plaintext: unlocking needs no passphrase, even on an encrypted repository.
      const target = await openTarget({ ...args, keyless: true });
      try {
        const rows = await unlock(target.repo.backend, args.force);
        if (args.json) printJson({ repository: target.repo.backend.location, locks: rows });
        else process.stdout.write(render(target.repo.backend.location, rows));
        setCode(EXIT.ok);
      } finally {
        await target.close();
      }
    },
  };
}

/** Removes every stale lock, and the live one named by `force`; returns them all. */
async function unlock(backend: RepositoryBackend, force: string | undefined): Promise<LockRow[]> {
  const found = await listLocks(backend);
  if (force && !found.some((l) => l.record?.id === force)) {
    throw new FerryError('CLI_USAGE', `no lock ${force}; locks: ${found.map((l) => l.record?.id ?? l.key).join(', ') || 'none'}`);
  }
  const rows: LockRow[] = [];
  for (const l of found) {
    const r = l.record;
    const removed = Boolean(l.stale) || (r !== undefined && r.id === force);
    if (removed) await backend.delete(l.key);
    rows.push({
      id: r?.id ?? l.key.slice(LOCKS_PREFIX.length).replace(/\.json$/, ''),
      operation: r?.operation ?? null,
      vms: r?.vms ?? [],
      job: r?.job ?? null,
      host: r?.holder.host ?? null,
      pid: r?.holder.pid ?? null,
      startedAt: r?.startedAt ?? null,
      heartbeatAt: r?.heartbeatAt ?? null,
      command: r?.command ?? null,
      stale: Boolean(l.stale),
      staleReason: l.stale ?? null,
      removed,
    });
  }
  return rows;
}

function render(location: string, rows: LockRow[]): string {
  let out = `Repository ${location}: ${rows.length} lock(s)\n`;
  if (!rows.length) return out;
  const state = (x: LockRow): string => (x.removed ? `removed: ${x.staleReason ?? 'forced'}` : 'live, kept');
  out += '\n' + table(
    ['LOCK', 'OPERATION', 'VMS', 'HOST', 'PID', 'STARTED', 'HEARTBEAT', 'STATE'],
    rows.map((x) => [x.id, x.operation ?? '?', x.vms.join(',') || '-', x.host ?? '?', String(x.pid ?? '?'), x.startedAt ?? '?', x.heartbeatAt ?? '?', state(x)]),
  );
  if (rows.some((x) => !x.removed)) out += 'Live locks stay; `--force LOCK` removes one (its holder then stops before committing anything).\n';
  return out;
}
