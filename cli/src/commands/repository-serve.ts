import type { CommandModule } from 'yargs';
import { FerryError, isJobFile, upgradeRepository, type UpgradeReport } from '@ferry/core';
import { startRepositoryService } from '@ferry/core/remote/services';
import { EXIT, printJson } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { log, serveUntilSignal, serviceConfig, type ServeArgs } from './serve-support.js';
import { VERBS } from './verbs.js';

interface Args extends ServeArgs {
  action: string;
  repository?: string;
  passphraseFile?: string;
  json?: boolean;
}

/** `ferry repository serve`: the target-side data mover as a service, in front of one repository. */
export function repositoryServeCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.repository,
    builder: (y) =>
      y
        .positional('action', { type: 'string', choices: ['serve', 'upgrade'], demandOption: true })
        .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (port 0: any free port)' })
        .option('certs', { type: 'string', describe: 'certificate folder made by `ferry certs init` (uses repository.crt/.key)' })
        .option('repository', { type: 'string', describe: 'a filesystem repository folder, or a YAML file { type, ...backend config }' })
        .option('config', { type: 'string', describe: 'YAML file: listen, certs, psk, allow, repository, resumeWindowSeconds, window' })
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('json', { type: 'boolean', default: false, describe: 'upgrade: print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      if (args.action === 'upgrade') {
        setCode(await upgrade(args));
        return;
      }
      const c = serviceConfig(args, { repository: args.repository });
      await serveUntilSignal('repository', () => startRepositoryService(c, log('repository')));
      setCode(EXIT.ok);
    },
  };
}

/** `ferry repository upgrade --repository PATH|JOB.yaml`: format 1 to 2 (`docs/cli.md`). */
async function upgrade(args: Args): Promise<number> {
  const where = args.repository;
  if (!where) throw new FerryError('CLI_USAGE', 'repository upgrade needs --repository PATH (a filesystem repository folder), FILE.yaml (a repository file) or JOB.yaml');
  // A job file, or a repository file (`repository: { type: s3, ... }`) that openTarget reads.
  const isJob = isJobFile(where);
  const target = await openTarget(isJob ? { job: where } : { repository: where, passphraseFile: args.passphraseFile });
  let report: UpgradeReport;
  try {
    report = await upgradeRepository(target.repo);
  } finally {
    await target.close();
  }
  if (args.json) printJson(report);
  else {
    const lost = report.indexObjectsLost.length ? `; ${report.indexObjectsLost.length} damaged index object(s) could not be rebuilt (their blocks count as missing)` : '';
    process.stdout.write(
      report.fromVersion === 2
        ? `${report.repository} is at format 2; removed ${report.leftoversRemoved} version 1 leftover(s)\n`
        : `Upgraded ${report.repository} to format 2 in ${(report.durationMs / 1000).toFixed(1)} s: ${report.packs} pack(s) in ` +
            `${report.indexObjectsWritten} index object(s), ${report.indexObjectsRebuilt} rebuilt${lost}; removed ${report.leftoversRemoved} version 1 object(s)\n`,
    );
  }
  return report.indexObjectsLost.length ? EXIT.failed : EXIT.ok;
}
