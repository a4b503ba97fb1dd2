import type { CommandModule } from 'yargs';
import { JobRuntime, humanSize } from '@ferry/core';
import { listRemotePoints } from '@ferry/core/remote/services';
import { EXIT, printJson, table } from '../output.js';

interface Args {
  job: string;
  vm?: string;
  json: boolean;
}

export function listCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    command: 'list <job>',
    describe: "list the restore points in the job's repository",
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', describe: 'only this VM' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON on stdout' }) as never,
    handler: async (args) => {
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      try {
        // A job with a repository service asks the service; otherwise the repository is read here.
        const { location, points } = rt.spec.remote
          ? await listRemotePoints(rt.spec.remote, args.vm)
          : await rt.repository({ create: false }).then(async (repo) => ({ location: repo.backend.location, points: await repo.listPoints(args.vm) }));
        const rows = points.map((p) => ({
          id: p.id,
          vm: p.vm,
          job: p.job,
          createdAt: p.createdAt,
          disks: p.disks.map((d) => ({ name: d.name, sizeBytes: d.sizeBytes, blockSize: d.blockSize, transport: d.transport, mode: d.mode })),
          sizeBytes: p.disks.reduce((n, d) => n + d.sizeBytes, 0),
        }));
        if (args.json) printJson({ repository: location, restorePoints: rows });
        else {
          process.stdout.write(`Repository ${location}: ${rows.length} restore point(s)\n\n`);
          process.stdout.write(
            table(
              ['RESTORE POINT', 'TIME', 'VM', 'JOB', 'DISKS', 'SIZE'],
              rows.map((r) => [r.id, r.createdAt, r.vm, r.job, r.disks.map((d) => d.name).join(', '), humanSize(r.sizeBytes)]),
            ),
          );
        }
        setCode(EXIT.ok);
      } finally {
        await rt.close();
      }
    },
  };
}
