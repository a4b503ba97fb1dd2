import path from 'node:path';
import type { CommandModule } from 'yargs';
import { JobRuntime, humanSize, isTargetAddress, restoreDisk } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  vm: string;
  disk: string;
  point: string;
  to: string;
  force: boolean;
  json: boolean;
}

export function restoreCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.restore,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('disk', { type: 'string', demandOption: true, describe: 'disk name as in the job (e.g. web01.raw)' })
        .option('point', { type: 'string', default: 'latest', describe: 'restore point id, or latest' })
        .option('to', { type: 'string', demandOption: true, describe: 'target file, block device, or NBD export (nbd://host/export, nbd+unix:///export?socket=PATH)' })
        .option('force', {
          type: 'boolean',
          default: false,
          describe:
            'overwrite an existing file or a block device (refused without it; a device must also be at least the disk size and not mounted or in use). ' +
            'A failed restore removes only a file it created; a target it overwrote stays, and the error says what it holds',
        })
        .option('json', { type: 'boolean', default: false, describe: 'print the restore report as JSON on stdout' }) as never,
    handler: async (args) => {
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      try {
        const to = isTargetAddress(args.to) ? args.to : path.resolve(args.to);
        const report = await restoreDisk(rt, { vm: args.vm, disk: args.disk, point: args.point, to, force: args.force });
        if (args.json) printJson(report);
        else {
          process.stdout.write(
            `Restored ${report.vm}/${report.disk} from ${report.restorePoint} to ${report.to}: ${humanSize(report.sizeBytes)} ` +
              `(${humanSize(report.bytesWritten)} data, ${humanSize(report.zeroBytes)} zero${report.sparse ? ' left sparse' : ''}) ` +
              `in ${(report.durationMs / 1000).toFixed(1)} s; every block verified\n`,
          );
        }
        setCode(EXIT.ok);
      } finally {
        await rt.close();
      }
    },
  };
}
