import type { CommandModule } from 'yargs';
import { JobRuntime, humanSize, listRemotePoints, sortPoints } from '@ferry/core';
import { EXIT, printJson, table } from '../output.js';
import { VERBS } from './verbs.js';

type ListRow =
  | {
      id: string;
      vm: string;
      job: string;
      status: 'ok';
      createdAt: string;
      disks: { name: string; sizeBytes: number; blockSize: number; transport: string; mode: string }[];
      sizeBytes: number;
    }
  | { id: string; vm: string; status: 'damaged'; manifest: string; code: string; reason: string };

interface Args {
  job: string;
  vm?: string;
  json: boolean;
}

export function listCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.list,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', describe: 'only this VM' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON on stdout' }) as never,
    handler: async (args) => {
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      try {
        // A job with a repository service asks the service; otherwise the repository is read here.
        const { location, points, damaged } = rt.spec.remote
          ? await listRemotePoints(rt.spec.remote, args.vm)
          : await rt.repository({ create: false }).then(async (repo) => ({ location: repo.backend.location, ...(await repo.listPointsChecked(args.vm)) }));
        const rows: ListRow[] = [
          ...points.map((p) => ({
            id: p.id,
            vm: p.vm,
            job: p.job,
            status: 'ok' as const,
            createdAt: p.createdAt,
            disks: p.disks.map((d) => ({ name: d.name, sizeBytes: d.sizeBytes, blockSize: d.blockSize, transport: d.transport, mode: d.mode })),
            sizeBytes: p.disks.reduce((n, d) => n + d.sizeBytes, 0),
          })),
          // A damaged manifest is reported, never a reason to hide the other points.
          ...damaged.map((d) => ({ id: d.id, vm: d.vm, status: 'damaged' as const, manifest: d.manifest, code: d.code, reason: d.reason })),
        ];
        sortPoints(rows);
        if (args.json) printJson({ repository: location, restorePoints: rows });
        else {
          const bad = damaged.length ? `, ${damaged.length} damaged (run \`ferry verify\`; \`ferry forget\` removes one)` : '';
          process.stdout.write(`Repository ${location}: ${points.length} restore point(s)${bad}\n\n`);
          process.stdout.write(
            table(
              ['RESTORE POINT', 'TIME', 'VM', 'JOB', 'DISKS', 'SIZE'],
              rows.map((r) =>
                r.status === 'ok'
                  ? [r.id, r.createdAt, r.vm, r.job, r.disks.map((d) => d.name).join(', '), humanSize(r.sizeBytes)]
                  : [r.id, 'DAMAGED', r.vm, '-', `${r.code}: ${r.reason}`, '-'],
              ),
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
