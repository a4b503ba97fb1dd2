import type { CommandModule } from 'yargs';
import { globMatcher, runPrune, type PruneReport } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { openTarget } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  dryRun: boolean;
  json: boolean;
}

export function pruneCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.prune,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('dry-run', { type: 'boolean', default: false, describe: 'only list what would go and what stays' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const target = await openTarget({ job: args.job });
      let report: PruneReport;
      try {
        const spec = target.spec!;
        // `vms: all` / `{ match }`: the VMs this job has points of (the host may be gone by now).
        const select = spec.source.select;
        const vms = select
          ? [...new Set((await target.repo.listPointsChecked()).points.filter((p) => p.job === spec.job).map((p) => p.vm))].filter(select === 'all' ? () => true : globMatcher(select.match))
          : spec.source.vms.map((v) => v.name);
        report = await runPrune(target.repo, { job: spec.job, vms, policy: spec.retention, dryRun: args.dryRun });
      } finally {
        await target.close();
      }
      if (args.json) printJson(report);
      else process.stdout.write(summary(report));
      setCode(EXIT.ok);
    },
  };
}

function summary(r: PruneReport): string {
  const p = r.policy;
  const policy = p ? `restorePoints ${p.restorePoints}, weekly ${p.weekly ?? 0}, monthly ${p.monthly ?? 0}, yearly ${p.yearly ?? 0}` : 'none: every point stays';
  let out = `Retention of job ${r.job} in ${r.repository} (${policy})${r.dryRun ? ' - dry run, nothing deleted' : ''}\n`;
  for (const x of r.removed) out += `  ${r.dryRun ? 'would remove' : 'removed'} ${x.vm} ${x.restorePoint} (${x.createdAt}): ${x.reasons.join('; ')}\n`;
  for (const x of r.kept) out += `  keep ${x.vm} ${x.restorePoint} (${x.createdAt}): ${x.reasons.join('; ')}\n`;
  out += `${r.removed.length} restore point(s) ${r.dryRun ? 'would go' : 'removed'}, ${r.kept.length} kept. Run \`ferry gc\` to reclaim their space.\n`;
  return out;
}
