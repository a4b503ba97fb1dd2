import path from 'node:path';
import type { FreezeMethod, GuestApplication } from '../contracts/guest-runtime.js';
import { FerryError, type ErrorLocation } from '../errors.js';
import type { DocPath } from './job-context.js';

export const DEFAULT_GUEST_TIMEOUT_SECONDS = 600;

/**
 * A VM's `guest:` key with defaults applied and paths resolved. Credentials stay where the job names
 * them (files, an environment variable) until the session reads them for `connect`.
 */
export interface GuestSpec {
  os: string;
  via: 'ssh' | 'qga';
  agent?: string;
  host?: string;
  port: number;
  user: string;
  /** Absolute paths of the private key and known_hosts files. */
  key?: string;
  knownHosts?: string;
  /** Name of the environment variable holding the SSH password. */
  passwordEnv?: string;
  freeze: FreezeMethod;
  mounts?: string[];
  scripts: { preFreeze?: string; postThaw?: string; postBackup?: string };
  applications: GuestApplication[];
  vssMode?: 'full' | 'copy';
  timeoutSeconds: number;
  onGuestFailure: 'fail' | 'continue';
  /** Where the `guest:` key is, for errors found when the session reads credentials. */
  at: DocPath;
}

type RawGuest = Partial<Omit<GuestSpec, 'applications' | 'at'>> & {
  applications?: (string | ({ name: string } & Record<string, unknown>))[];
  password?: string | { env: string };
};

/**
 * Checks what the schema cannot say (which keys each `via` needs) and applies defaults: `via` is
 * `ssh` when `host` is given, else `qga`; port 22, user root, freeze auto, 600 s, onGuestFailure fail.
 */
export function guestSpec(raw: RawGuest, dir: string, at: DocPath, where: (p: DocPath) => ErrorLocation): GuestSpec {
  const missing = (key: string, why: string): FerryError => new FerryError('JOB_INVALID', `missing key "${key}": ${why}`, where([...at, key]));
  if (raw.password !== undefined) {
    if (typeof raw.password === 'string') {
      throw new FerryError('JOB_INVALID', 'a password is never written into the job file: name the environment variable that holds it (password: { env: NAME }, or passwordEnv: NAME)', where([...at, 'password']));
    }
    if (raw.passwordEnv !== undefined && raw.passwordEnv !== raw.password.env) {
      throw new FerryError('JOB_INVALID', 'give the password\'s environment variable once (password.env or passwordEnv)', where([...at, 'password']));
    }
    raw = { ...raw, passwordEnv: raw.password.env };
  }
  const via = raw.via ?? (raw.host !== undefined ? 'ssh' : 'qga');
  if (via === 'ssh') {
    if (raw.host === undefined) throw missing('host', 'guest processing over ssh needs the guest\'s address');
    if (raw.knownHosts === undefined) throw missing('knownHosts', "the guest's SSH host key is always checked against a known_hosts file");
    if (raw.key === undefined && raw.passwordEnv === undefined) throw missing('key', 'name a private key file (or passwordEnv, an environment variable holding the password)');
  }
  // `agent` may be left out when the source host knows the VM's agent channel: checked when the session connects
  for (const [i, m] of (raw.mounts ?? []).entries()) {
    if (raw.os === 'linux' && !m.startsWith('/')) throw new FerryError('JOB_INVALID', `mount "${m}" must be an absolute path in the guest`, where([...at, 'mounts', i]));
  }
  const abs = (p: string | undefined): string | undefined => (p === undefined ? undefined : path.resolve(dir, p));
  const agent = raw.agent && `unix:${path.resolve(dir, raw.agent.slice('unix:'.length))}`;
  return {
    os: raw.os!,
    via,
    ...(agent && { agent }),
    ...(raw.host !== undefined && { host: raw.host }),
    port: raw.port ?? 22,
    user: raw.user ?? 'root',
    ...(raw.key !== undefined && { key: abs(raw.key) }),
    ...(raw.knownHosts !== undefined && { knownHosts: abs(raw.knownHosts) }),
    ...(raw.passwordEnv !== undefined && { passwordEnv: raw.passwordEnv }),
    freeze: raw.freeze ?? 'auto',
    ...(raw.mounts && { mounts: raw.mounts }),
    scripts: {
      ...(raw.scripts?.preFreeze && { preFreeze: abs(raw.scripts.preFreeze) }),
      ...(raw.scripts?.postThaw && { postThaw: abs(raw.scripts.postThaw) }),
      ...(raw.scripts?.postBackup && { postBackup: abs(raw.scripts.postBackup) }),
    },
    applications: (raw.applications ?? []).map((a) => (typeof a === 'string' ? { name: a, options: {} } : (({ name, ...options }) => ({ name, options }))(a))),
    ...(raw.vssMode && { vssMode: raw.vssMode }),
    timeoutSeconds: raw.timeoutSeconds ?? DEFAULT_GUEST_TIMEOUT_SECONDS,
    onGuestFailure: raw.onGuestFailure ?? 'fail',
    at,
  };
}
