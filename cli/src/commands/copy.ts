import type { CommandModule } from 'yargs';
import { copyPoints, humanSize, JobRuntime, RepositoryRuntime } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  to: string;
  vm?: string;
  point: string;
  json: boolean;
}

/**
 * `ferry copy JOB.yaml --to REPOSITORY.yaml`: copies restore points from the job's repository to
 * another one (the 3-2-1 rule), sending only the blocks the target lacks.
 */
export function copyCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.copy,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML): the source repository and the compression for the target' })
        .option('to', { type: 'string', demandOption: true, describe: 'the target: a repository YAML file (created when its location is empty) or a filesystem repository folder' })
        .option('vm', { type: 'string', describe: 'only this VM (default: every VM of the source)' })
        .option('point', { type: 'string', default: 'latest', describe: 'a restore point id, latest (each VM\'s newest) or all' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const source = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      let target: RepositoryRuntime | undefined;
      try {
        const src = await source.repository({ create: false });
        target = await RepositoryRuntime.open(args.to);
        const dst = await target.repository({ create: /\.ya?ml$/i.test(args.to) });
        const report = await copyPoints(src, await source.codec(), dst, await target.codec(), {
          vm: args.vm,
          point: args.point,
          compressor: source.spec.storage.compressor,
          job: source.spec.job,
        });
        if (args.json) printJson(report);
        else {
          for (const p of report.points) {
            process.stdout.write(`${p.vm} ${p.restorePoint}: ${p.status === 'present' ? 'already in the target' : `copied (${p.blocksTransferred} block(s) sent)`}\n`);
          }
          process.stdout.write(
            `Copied ${report.points.filter((p) => p.status === 'copied').length} restore point(s) to ${report.to}: ${report.blocks.transferred} block(s) sent (${humanSize(report.bytesTransferred)}), ` +
              `${report.blocks.present} already there, ${report.blocks.zero} zero\n`,
          );
        }
        setCode(EXIT.ok);
      } finally {
        await target?.close();
        await source.close();
      }
    },
  };
}
