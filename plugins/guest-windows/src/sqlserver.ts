import { FerryError, type ApplicationOutcome, type GuestApplication } from '@ferry/core/plugin';
import { LISTING_BYTES, psQuote, tail, type PowerShell } from './powershell.js';

/** The SQL Server VSS writer's name as `vssadmin list writers` prints it. */
export const SQLSERVER_WRITER = 'SqlServerWriter';

export const WINDOWS_APPLICATIONS = ['sqlserver'] as const;

/** Refuses an `applications:` item guest-windows has no hook for. */
export function windowsApplications(apps: GuestApplication[]): void {
  for (const a of apps) {
    if (!(WINDOWS_APPLICATIONS as readonly string[]).includes(a.name)) {
      throw new FerryError('JOB_INVALID', `application "${a.name}" has no hook in guest-windows (known: ${WINDOWS_APPLICATIONS.join(', ')}; other VSS-aware applications are quiesced by their own writers)`);
    }
  }
}

/** Databases whose log a log backup would truncate: user databases online, not in SIMPLE recovery. */
const LIST_QUERY = "SET NOCOUNT ON; SELECT name FROM sys.databases WHERE database_id > 4 AND state_desc = 'ONLINE' AND recovery_model_desc <> 'SIMPLE' ORDER BY name";

function sqlcmd(instance: string, query: string, extra: string[] = []): string {
  return `sqlcmd.exe -S ${psQuote(instance)} -E -b ${extra.join(' ')}${extra.length ? ' ' : ''}-Q ${psQuote(query)}`;
}

/**
 * SQL Server transaction log truncation after a committed point: `BACKUP LOG [db] TO DISK = 'NUL'`
 * for every online user database in FULL or BULK_LOGGED recovery (through `sqlcmd -E`, Windows
 * authentication of the SSH user). The log backup goes nowhere, so the log chain for point-in-time
 * restore starts anew from the next log backup: this is for sites whose only backup of the
 * database is the VM's restore point. Runs only from `afterBackup`.
 */
export async function sqlServerTruncation(ps: PowerShell, instance: string, signal?: AbortSignal): Promise<ApplicationOutcome> {
  const listed = await ps.run(sqlcmd(instance, LIST_QUERY, ['-h', '-1', '-W']), { signal, maxOutput: LISTING_BYTES });
  if (listed.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `sqlserver: listing databases on ${instance} failed (exit ${listed.exitCode ?? 'none'}): ${tail(listed.output)}`);
  const dbs = listed.output.split(/\r?\n/).map((l) => l.trim()).filter(Boolean);
  if (!dbs.length) return { name: 'sqlserver', status: 'skipped', method: 'log truncation', detail: 'no database in FULL or BULK_LOGGED recovery' };
  const lines = dbs.flatMap((db) => [
    `Write-Output ${psQuote(`### ${db}`)}`,
    sqlcmd(instance, `BACKUP LOG [${db.replace(/]/g, ']]')}] TO DISK = N'NUL'`),
    'if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }',
  ]);
  const r = await ps.run(lines.join('\n'), { signal });
  if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `sqlserver: log truncation failed (exit ${r.exitCode ?? 'none'}): ${tail(r.output)}`);
  return { name: 'sqlserver', status: 'success', method: 'log truncation', detail: `BACKUP LOG TO DISK = 'NUL' of ${dbs.join(', ')}` };
}
