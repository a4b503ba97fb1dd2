import type { CommandModule } from 'yargs';
import { FerryError, humanSize, parseDuration, parsePercent, runGc, type GcReport } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  job?: string;
  repository?: string;
  passphraseFile?: string;
  dryRun: boolean;
  grace: string;
  rewriteThreshold: string;
  json: boolean;
}

export function gcCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.gc,
    builder: (y) =>
      y
        .positional('job', { type: 'string', describe: 'job file (YAML); its repository is collected' })
        .option('repository', TARGET_OPTIONS.repository)
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('dry-run', { type: 'boolean', default: false, describe: 'only report what would be removed' })
        .option('grace', { type: 'string', default: '1h', describe: 'keep temporary files and uncommitted maps younger than this (s, m, h, d)' })
        .option('rewrite-threshold', { type: 'string', default: '20%', describe: 'rewrite a partly used pack when this share of it is unused' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const graceMs = parseDuration(args.grace);
      const threshold = parsePercent(args.rewriteThreshold);
      if (graceMs === undefined) throw new FerryError('CLI_USAGE', `--grace ${args.grace}: use a duration such as 0, 90s, 30m, 1h or 2d`);
      if (threshold === undefined) throw new FerryError('CLI_USAGE', `--rewrite-threshold ${args.rewriteThreshold}: use a share such as 20%`);
      const target = await openTarget(args);
      let report: GcReport;
      try {
        report = await runGc(target.repo, { dryRun: args.dryRun, graceMs, rewriteThresholdPercent: threshold });
      } finally {
        await target.close();
      }
      if (args.json) printJson(report);
      else process.stdout.write(summary(report));
      setCode(EXIT.ok);
    },
  };
}

function summary(r: GcReport): string {
  const would = r.dryRun ? 'would ' : '';
  let out = `Garbage collection of ${r.repository}${r.dryRun ? ' (dry run: nothing changed)' : ''} in ${(r.durationMs / 1000).toFixed(1)} s\n`;
  out += `  ${r.restorePoints} restore point(s) need ${r.referencedBlocks} block(s) in ${r.packs.total} pack(s)\n`;
  out += `  ${would}remove ${r.packs.unused} unused and ${r.packs.orphaned} orphaned pack(s); ${would}rewrite ${r.packs.rewritten} partly used pack(s)\n`;
  if (!r.dryRun) out += `  deleted ${r.deletedPacks} pack(s), put back ${r.resurrectedPacks}; reclaimed ${humanSize(Math.max(0, r.bytesReclaimed))}\n`;
  else out += `  would reclaim about ${humanSize(r.bytesReclaimed)}\n`;
  if (r.pending.packs) out += `  ${r.pending.packs} condemned pack(s) wait for: ${r.pending.waitingFor.join('; ') || 'a later run'}; the next gc removes them\n`;
  if (r.packs.partlyUsedKept) out += `  kept ${r.packs.partlyUsedKept} partly used pack(s): ${humanSize(r.wasteBytesLeft)} unused, below the ${r.rewriteThresholdPercent}% rewrite threshold\n`;
  if (r.retainedUntil) out += `  left ${r.retainedUntil.packs} pack(s) alone: retained until ${r.retainedUntil.until} (immutability); a gc after that removes them\n`;
  if (r.indexObjectsMerged) out += `  merged ${r.indexObjectsMerged} index object(s) into one\n`;
  for (const s of r.rewriteSkipped) out += `  not rewritten: pack ${s.pack}: ${s.why}\n`;
  out += `  removed ${r.uncommittedMapsRemoved} map(s) of uncommitted restore points and ${r.temporaryFilesRemoved} temporary file(s)\n`;
  return out;
}
