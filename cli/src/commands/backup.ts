import type { CommandModule } from 'yargs';
import { JobRuntime, humanSize, runBackup, type GuestReport, type SessionReport } from '@ferry/core/backup';
import { EXIT, printJson, table } from '../output.js';
import { progressReporter } from '../progress.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  json: boolean;
}

export function backupCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.backup,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the session report as JSON on stdout' }) as never,
    handler: async (args) => {
      const rt = await JobRuntime.open(args.job);
      const progress = progressReporter(!args.json);
      const stop = interruptible();
      let report: SessionReport;
      try {
        report = await runBackup(rt, { onProgress: progress.onProgress, signal: stop.signal });
      } finally {
        stop.dispose();
        progress.stop();
        await rt.close();
      }
      if (args.json) printJson(report);
      else process.stdout.write(summary(report));
      setCode(stop.signal.aborted ? EXIT.interrupted : report.status === 'success' ? EXIT.ok : EXIT.failed);
    },
  };
}

/**
 * The first Ctrl-C (or SIGTERM) stops the session cleanly: snapshots are released and nothing
 * unfinished is committed. A second one exits at once.
 */
function interruptible(): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (controller.signal.aborted) process.exit(EXIT.interrupted);
    process.stderr.write(`\nferry: ${sig}: stopping the session and cleaning up (again to quit at once)\n`);
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

/** One line per VM with guest processing (and its warnings): consistency, freeze window, each step. */
function guestLine(vm: string, g: GuestReport): string {
  const steps = g.steps.map((st) => `${st.step}${st.status === 'success' ? '' : ` ${st.status.toUpperCase()}`} ${st.durationMs} ms`).join(', ');
  const window = g.freezeWindowMs === null ? 'nothing frozen' : `frozen ${g.freezeWindowMs} ms`;
  let out = `  vm ${vm}: guest ${g.consistency}-consistent, ${window}; ${steps}\n`;
  for (const w of g.warnings) out += `  vm ${vm}: warning: ${w}\n`;
  return out;
}

function summary(r: SessionReport): string {
  const secs = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
  let out = `Session ${r.session} of job ${r.job}: ${r.status} in ${secs(r.durationMs)}`;
  out += r.bottleneck ? ` (bottleneck: ${r.bottleneck})\n` : '\n';
  out += `Source ${r.source} -> repository ${r.repository}; compression ${r.compression}, block size ${humanSize(r.blockSize)}\n\n`;
  if (r.disks.length) {
    out += table(
      ['VM', 'DISK', 'TRANSPORT', 'MODE', 'SIZE', 'READ', 'ZERO SKIPPED', 'SENT', 'STORED', 'TIME', 'RESTORE POINT'],
      r.disks.map((d) => [
        d.vm,
        d.disk,
        d.transport || '-',
        d.mode,
        humanSize(d.sizeBytes),
        humanSize(d.bytesRead),
        humanSize(d.zeroBytesSkipped),
        humanSize(d.bytesTransferred),
        humanSize(d.bytesWritten),
        secs(d.durationMs),
        d.restorePoint ?? (d.status === 'failed' ? 'FAILED' : '-'),
      ]),
    );
  }
  for (const d of r.disks) if (d.transportReason) out += `  ${d.vm}/${d.disk}: transport ${d.transport}: ${d.transportReason}\n`;
  for (const d of r.disks) if (d.swapBytesSkipped) out += `  ${d.vm}/${d.disk}: ${humanSize(d.swapBytesSkipped)} of swap, pagefile or hibernation file neither read nor stored (restored as zeros)\n`;
  for (const d of r.disks) for (const n of d.swapNotes ?? []) out += `  ${d.vm}/${d.disk}: ${n}\n`;
  for (const d of r.disks) {
    if (!d.proxy) continue;
    const stages = (d.stages ?? []).map((s) => `${s.stage} ${Math.round(s.busyShare * 100)}%`).join(', ');
    out += `  ${d.vm}/${d.disk}: via proxy ${d.proxy}; ${d.reconnects ?? 0} reconnect(s)${d.resentBlocks ? `, ${d.resentBlocks} block(s) sent again` : ''}; busy ${stages}${d.bottleneck ? ` (bottleneck: ${d.bottleneck})` : ''}\n`;
  }
  for (const v of r.vms) if (v.guest) out += guestLine(v.vm, v.guest);
  for (const d of r.disks) if (d.error) out += `  ${d.vm}/${d.disk} failed: ${d.error.message}\n`;
  for (const v of r.vms) if (v.error && !r.disks.some((d) => d.vm === v.vm && d.error)) out += `  vm ${v.vm} failed: ${v.error.message}\n`;
  if (r.healedBlocks) out += `Healed ${r.healedBlocks} damaged block(s): read from the source again and stored anew\n`;
  if (r.retention) {
    out += `Retention removed ${r.retention.removed.length} restore point(s)${r.retention.removed.map((p) => ` ${p.vm}/${p.restorePoint}`).join(',')}\n`;
    if (r.retention.error) out += `  retention failed: ${r.retention.error.message}\n`;
  }
  if (r.verify) out += `Health check of the new restore points: ${r.verify.status} (${r.verify.blocksChecked} block(s) read, sample ${r.verify.samplePercent}%)\n`;
  for (const c of r.copies ?? []) {
    out += c.error ? `Copy to ${c.to} failed: ${c.error.message}\n` : `Copied ${c.points} restore point(s) to ${c.to}: ${c.blocksTransferred} block(s) sent (${humanSize(c.bytesTransferred)})\n`;
  }
  if (r.requests) {
    const q = r.requests;
    out += `Repository requests: GET ${q.GET}, PUT ${q.PUT}, LIST ${q.LIST}, DELETE ${q.DELETE}, HEAD ${q.HEAD}${q.retries ? ` (${q.retries} retried)` : ''}; ${humanSize(q.bytesUp)} up, ${humanSize(q.bytesDown)} down\n`;
    for (const n of q.notes ?? []) out += `  ${n}\n`;
  }
  if (r.error) out += `  session failed: ${r.error.message}\n`;
  if (r.stages.length) out += `Stages busy: ${r.stages.map((s) => `${s.stage} ${Math.round(s.busyShare * 100)}%`).join(', ')}\n`;
  return out;
}
