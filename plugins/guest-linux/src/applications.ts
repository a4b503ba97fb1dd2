import { FerryError, type ApplicationOutcome, type GuestApplication } from '@ferry/core/plugin';
import type { GuestChannel, HeldCommand } from '@ferry/guest-common';

/** One application's quiescing: `quiesce` before the freeze, `resume` after the thaw (always, once quiesced). */
export interface Quiescer {
  quiesce(signal?: AbortSignal): Promise<ApplicationOutcome>;
  resume(): Promise<ApplicationOutcome | undefined>;
}

export const APPLICATIONS = ['postgresql', 'mysql'] as const;

/**
 * The quiescing hook for `applications:` item `app`. Options (a mapping item): `host` (server address
 * or socket folder), `port`, `user` (database user), `database`, `osUser` (run the client as this
 * guest account, e.g. `postgres` for peer authentication), `client` (the client program's path).
 */
export function quiescerFor(app: GuestApplication, channel: GuestChannel): Quiescer {
  if (app.name === 'postgresql') return new PostgresQuiescer(app.options, channel);
  if (app.name === 'mysql' || app.name === 'mariadb') return new MysqlQuiescer(app.options, channel, app.name);
  throw new FerryError('JOB_INVALID', `application "${app.name}" has no quiescing hook in guest-linux (known: ${APPLICATIONS.join(', ')}, mariadb)`);
}

/** Runs `argv` as `osUser` when one is given (through `su`), else as the connecting user. */
function asUser(argv: string[], osUser: unknown): string[] {
  if (typeof osUser !== 'string') return argv;
  return ['su', '-s', '/bin/sh', osUser, '-c', argv.map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ')];
}

/**
 * PostgreSQL: `CHECKPOINT` before the freeze. The snapshot is atomic (the guest's file systems frozen
 * together, the disks' point taken in one step), so the restored data folder is what a crash at that
 * instant leaves, which PostgreSQL recovers from its WAL (PostgreSQL docs, "File System Level
 * Backup"); the checkpoint writes every dirty buffer first, so that recovery replays only the WAL
 * of the freeze window. Nothing is held across the snapshot (no `pg_backup_start`: its
 * `backup_label` would have to be stored with the point).
 */
class PostgresQuiescer implements Quiescer {
  constructor(
    private readonly o: Record<string, unknown>,
    private readonly channel: GuestChannel,
  ) {}

  async quiesce(signal?: AbortSignal): Promise<ApplicationOutcome> {
    const argv = [typeof this.o.client === 'string' ? this.o.client : 'psql', '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1'];
    if (this.o.host !== undefined) argv.push('-h', String(this.o.host));
    if (this.o.port !== undefined) argv.push('-p', String(this.o.port));
    if (this.o.user !== undefined) argv.push('-U', String(this.o.user));
    argv.push('-d', typeof this.o.database === 'string' ? this.o.database : 'postgres', '-c', 'CHECKPOINT');
    const r = await this.channel.exec(asUser(argv, this.o.osUser), { signal });
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `postgresql: CHECKPOINT failed (exit ${r.exitCode}): ${r.output.trim()}`);
    return { name: 'postgresql', status: 'success', method: 'CHECKPOINT', detail: 'dirty buffers written; the atomic snapshot is recovered from WAL on start' };
  }

  async resume(): Promise<undefined> {
    return undefined;
  }
}

/**
 * MySQL/MariaDB: `FLUSH TABLES WITH READ LOCK` in a client session kept open over the freeze and
 * the snapshot, `UNLOCK TABLES` after the thaw (closing the session also releases the lock, so a
 * lost connection never leaves the server locked). Needs a channel that keeps a command running
 * (SSH); the guest agent cannot.
 */
class MysqlQuiescer implements Quiescer {
  private held?: HeldCommand;

  constructor(
    private readonly o: Record<string, unknown>,
    private readonly channel: GuestChannel,
    private readonly name: string,
  ) {}

  async quiesce(signal?: AbortSignal): Promise<ApplicationOutcome> {
    if (!this.channel.hold) throw new FerryError('GUEST_STEP_FAILED', `${this.name}: holding a read lock needs a session kept open (via: ssh); ${this.channel.label} cannot`);
    const argv = [typeof this.o.client === 'string' ? this.o.client : 'mysql', '--batch', '--skip-column-names', '--unbuffered'];
    if (this.o.host !== undefined) argv.push(String(this.o.host).startsWith('/') ? `--socket=${this.o.host}` : `--host=${this.o.host}`);
    if (this.o.port !== undefined) argv.push(`--port=${this.o.port}`);
    if (this.o.user !== undefined) argv.push(`--user=${this.o.user}`);
    this.held = await this.channel.hold(asUser(argv, this.o.osUser));
    this.held.write("FLUSH TABLES WITH READ LOCK;\nSELECT 'ferry-locked';\n");
    await this.held.waitFor('ferry-locked', signal);
    return { name: this.name, status: 'success', method: 'FLUSH TABLES WITH READ LOCK', detail: 'held in one session across the snapshot' };
  }

  async resume(): Promise<ApplicationOutcome | undefined> {
    const held = this.held;
    if (!held) return undefined;
    this.held = undefined;
    held.write("UNLOCK TABLES;\nSELECT 'ferry-unlocked';\n");
    const r = await held.end(5000);
    const ok = r.output.includes('ferry-unlocked');
    return { name: this.name, status: ok ? 'success' : 'failed', method: 'UNLOCK TABLES', ...(!ok && { detail: `the session ended (exit ${r.exitCode}); the lock went with it: ${r.output.trim()}` }) };
  }
}
