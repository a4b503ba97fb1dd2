import path from 'node:path';
import type { CommandModule } from 'yargs';
import { FerryError, JobRuntime, humanSize, isTargetAddress, restoreDisk } from '@ferry/core/restore';
import { EXIT, printJson } from '../output.js';
import { VERBS } from './verbs.js';

export interface RestoreArgs {
  job: string;
  vm: string;
  disk?: string;
  define?: string;
  point: string;
  to: string;
  force: boolean;
  json: boolean;
}

export function restoreCommand(setCode: (c: number) => void): CommandModule<object, RestoreArgs> {
  return {
    ...VERBS.restore,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('disk', { type: 'string', describe: 'disk name as in the job (e.g. web01.raw); required unless --define' })
        .option('define', {
          type: 'string',
          describe:
            'restore every disk of the point into the folder --to (<NAME>-<disk>.raw) and define a new VM NAME on the job\'s source host from the definition the point saved (libvirt: new UUID and MAC addresses)',
        })
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
      if (args.define !== undefined && args.disk !== undefined) {
        throw new FerryError('CLI_USAGE', '--define restores every disk of the point; leave out --disk');
      }
      if (args.define === undefined && args.disk === undefined) throw new FerryError('CLI_USAGE', 'missing --disk (or --define NAME to restore the whole VM)');
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      try {
        if (args.define !== undefined) {
          const { restoreVm } = await import('@ferry/core');
          const report = await restoreVm(rt, { vm: args.vm, point: args.point, toDir: path.resolve(args.to), define: args.define, force: args.force });
          if (args.json) printJson(report);
          else {
            const files = report.disks.map((d) => `${d.disk} → ${d.to}`).join(', ');
            process.stdout.write(`Restored ${report.vm} from ${report.restorePoint} (${files}); defined ${report.defined.name}${report.defined.id ? ` (${report.defined.id})` : ''}: ${report.defined.notes.join('; ')}\n`);
          }
          setCode(EXIT.ok);
          return;
        }
        const to = isTargetAddress(args.to) ? args.to : path.resolve(args.to);
        const report = await restoreDisk(rt, { vm: args.vm, disk: args.disk!, point: args.point, to, force: args.force });
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
