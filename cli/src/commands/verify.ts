import type { CommandModule } from 'yargs';
import { FerryError, humanSize, parsePercent, runVerify, type VerifyReport } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { openTarget, TARGET_OPTIONS } from './repository-target.js';
import { VERBS } from './verbs.js';

interface Args {
  job?: string;
  repository?: string;
  passphraseFile?: string;
  sample: string;
  json: boolean;
}

export function verifyCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.verify,
    builder: (y) =>
      y
        .positional('job', { type: 'string', describe: 'job file (YAML); its repository is checked' })
        .option('repository', TARGET_OPTIONS.repository)
        .option('passphrase-file', TARGET_OPTIONS['passphrase-file'])
        .option('sample', { type: 'string', default: '100%', describe: 'share of the blocks to read, e.g. 5%' })
        .option('json', { type: 'boolean', default: false, describe: 'print the report as JSON on stdout' }) as never,
    handler: async (args) => {
      const samplePercent = parsePercent(args.sample);
      if (samplePercent === undefined) throw new FerryError('CLI_USAGE', `--sample ${args.sample}: use a share from 0.1% to 100%`);
      const target = await openTarget(args);
      let report: VerifyReport;
      try {
        report = await runVerify(target.repo, await target.runtime.codec(), { samplePercent });
      } finally {
        await target.close();
      }
      if (args.json) printJson(report);
      else process.stdout.write(summary(report));
      if (report.error && !args.json) process.stderr.write(`ferry: ${report.error.message}\n`);
      setCode(report.status === 'ok' ? EXIT.ok : EXIT.failed);
    },
  };
}

function summary(r: VerifyReport): string {
  const b = r.blocks;
  let out =
    `Health check of ${r.repository}: ${r.status === 'ok' ? 'OK' : 'DAMAGED'}\n` +
    `  ${r.restorePoints.checked} restore point(s), ${r.blockMaps.checked} block map(s); ${b.checked} of ${b.needed} needed block(s) read` +
    `${r.samplePercent < 100 ? ` (sample ${r.samplePercent}%)` : ''}, ${humanSize(r.bytesRead)} at ${r.throughputMiBps} MiB/s in ${(r.durationMs / 1000).toFixed(1)} s\n`;
  for (const d of r.damagedBlocks.slice(0, 20)) {
    const where = d.pack ? `packs/${d.pack.slice(0, 2)}/${d.pack}@${d.offset}` : 'no pack';
    const uses = d.neededBy.map((u) => `${u.vm} ${u.restorePoint} ${u.disk} at offset ${u.offsets.slice(0, 4).join(', ')}${u.offsets.length > 4 ? ', ...' : ''}`);
    out += `  block ${d.hash} (${d.reason}, ${where}): needed by ${uses.join('; ') || 'no readable point'}\n`;
  }
  if (r.damagedBlocks.length > 20) out += `  ... and ${r.damagedBlocks.length - 20} more damaged block(s) (--json lists all)\n`;
  for (const o of r.damagedObjects) out += `  ${o.kind} ${o.object}: ${o.message}\n`;
  for (const o of r.repairedObjects) out += `  repaired ${o.object}: ${o.message}\n`;
  if (r.affectedPoints.length) {
    out += `Affected restore points:\n`;
    for (const p of r.affectedPoints) {
      out += `  ${p.vm} ${p.restorePoint}: ${p.disks.map((d) => `${d.disk} (${d.mapDamaged ? 'block map damaged' : `${d.damagedBlocks} damaged block(s)`})`).join(', ')}\n`;
    }
    out += 'The next backup of each affected disk stores its damaged blocks again (self-heal); until then, restoring them fails on the named block.\n';
  }
  return out;
}
