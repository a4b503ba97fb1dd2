import type { CommandModule } from 'yargs';
import { FerryError, passphraseFile, RepositoryLock } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  action: string;
  job?: string;
  repository?: string;
  passphraseFile?: string;
  newPassphraseFile: string;
  json: boolean;
}

interface KeyChangeReport {
  repository: string;
  /** The key object that now wraps the master keys. */
  written: string;
  /** Key objects removed: their passphrases no longer open the repository. */
  removed: string[];
}

/**
 * `ferry key change`: wraps the repository's master keys with a new passphrase. No data is
 * rewritten. Crash-safe: the new key object is put (atomically) before the old ones are deleted, so
 * an interrupted change leaves a repository that opens with the old or the new passphrase.
 */
export function keyCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.key,
    builder: (y) =>
      y
        .positional('action', { type: 'string', choices: ['change'], demandOption: true, describe: 'change: set a new passphrase' })
        .positional('job', { type: 'string', describe: "job file (YAML); its repository.encryption names the current passphrase" })
        .option('repository', TARGET_OPTIONS.repository)
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('new-passphrase-file', { type: 'string', demandOption: true, describe: 'file holding the new passphrase' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const fresh = await passphraseFile(args.newPassphraseFile, `--new-passphrase-file ${args.newPassphraseFile}`).read();
      if (!fresh) throw new FerryError('CLI_USAGE', `--new-passphrase-file ${args.newPassphraseFile} is empty`);
      const target = await openTarget(args);
      let report: KeyChangeReport;
      try {
        const lock = await RepositoryLock.acquire(target.repo.backend, { operation: 'key', command: 'ferry key change' });
        try {
          await lock.assertHeld();
          report = { repository: target.repo.backend.location, ...(await target.repo.changePassphrase(fresh)) };
        } finally {
          await lock.release();
        }
      } finally {
        await target.close();
      }
      if (args.json) printJson(report);
      else {
        process.stdout.write(
          `Passphrase of ${report.repository} changed: the keys are now wrapped in ${report.written}; ` +
            `removed ${report.removed.length ? report.removed.join(', ') : 'nothing'}. The old passphrase no longer opens the repository.\n` +
            (args.job ? 'Point the job\'s repository.encryption at the new passphrase.\n' : ''),
        );
      }
      setCode(EXIT.ok);
    },
  };
}
