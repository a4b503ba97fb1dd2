import { readFile } from 'node:fs/promises';
import { FerryError } from '../errors.js';
import type { PassphraseSource } from './repository.js';

/** The environment variable CLI verbs on a bare repository (and jobs without `encryption:`) read. */
export const PASSPHRASE_ENV = 'FERRY_PASSPHRASE';

/**
 * A passphrase kept in a file: its whole content, without one trailing newline (so `echo secret >
 * file` works). No interactive prompt: Ferry runs unattended (cron, CI), where there is no terminal.
 */
export function passphraseFile(file: string, describe = `passphrase file ${file}`): PassphraseSource {
  return {
    describe,
    read: async () => {
      let text: string;
      try {
        text = await readFile(file, 'utf8');
      } catch (err) {
        throw new FerryError('REPO_PASSPHRASE_REQUIRED', `cannot read the ${describe}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
          file,
        });
      }
      return text.replace(/\r?\n$/, '');
    },
  };
}

/** A passphrase in an environment variable; undefined (not given) when the variable is unset. */
export function passphraseEnv(name: string, describe = `environment variable ${name}`): PassphraseSource {
  return { describe, read: async () => process.env[name] };
}

/** `repository.encryption` of a job, or FERRY_PASSPHRASE when the job names none. */
export function jobPassphrase(encryption: { passphraseFile?: string; passphraseEnv?: string } | undefined, jobFile: string): PassphraseSource {
  if (encryption?.passphraseFile) return passphraseFile(encryption.passphraseFile, `passphrase file ${encryption.passphraseFile} (${jobFile} repository.encryption.passphraseFile)`);
  if (encryption?.passphraseEnv) return passphraseEnv(encryption.passphraseEnv, `environment variable ${encryption.passphraseEnv} (${jobFile} repository.encryption.passphraseEnv)`);
  return passphraseEnv(PASSPHRASE_ENV);
}
