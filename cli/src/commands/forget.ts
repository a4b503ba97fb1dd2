import type { CommandModule } from 'yargs';
import { forgetPoint } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  job?: string;
  repository?: string;
  passphraseFile?: string;
  vm: string;
  point: string;
  json: boolean;
}

export function forgetCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.forget,
    builder: (y) =>
      y
        .positional('job', { type: 'string', describe: 'job file (YAML)' })
        .option('repository', TARGET_OPTIONS.repository)
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('point', { type: 'string', demandOption: true, describe: 'restore point id (see `ferry list`)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const target = await openTarget(args);
      try {
        const report = await forgetPoint(target.repo, { vm: args.vm, point: args.point, job: target.spec?.job });
        if (args.json) printJson(report);
        else {
          process.stdout.write(
            `Forgot restore point ${report.restorePoint} of vm ${report.vm}${report.status === 'damaged' ? ' (its manifest was damaged)' : ''}: ` +
              `removed ${report.removed.length} object(s). Run \`ferry gc\` to reclaim its space.\n`,
          );
        }
        setCode(EXIT.ok);
      } finally {
        await target.close();
      }
    },
  };
}
