import { createRequire } from 'node:module';
import type cliProgressT from 'cli-progress';
import { humanSize, type ProgressEvent } from '@ferry/core/backup';

/**
 * A progress bar per disk on stderr when it is a terminal; silent otherwise (CI logs, --json).
 */
export function progressReporter(enabled: boolean): { onProgress: (e: ProgressEvent) => void; stop: () => void } {
  if (!enabled || !process.stderr.isTTY) return { onProgress: () => undefined, stop: () => undefined };
  // Loaded only for a terminal: --json runs, CI logs and every other command never pay for it.
  const cliProgress = createRequire(import.meta.url)('cli-progress') as typeof cliProgressT;
  let bar: cliProgressT.SingleBar | undefined;
  // With parallelDisks several disks run at once: the bar follows the disk that started last.
  let shown = '';
  let lastUpdate = 0;
  let t0 = 0;
  const stop = (): void => {
    bar?.stop();
    bar = undefined;
  };
  const onProgress = (e: ProgressEvent): void => {
    if (e.type === 'disk-start') {
      stop();
      shown = `${e.vm}/${e.disk}`;
      bar = new cliProgress.SingleBar(
        {
          stream: process.stderr,
          format: `${e.vm}/${e.disk} [{bar}] {percentage}% {done}/{size} via ${e.transport} | {speed}/s`,
          hideCursor: true,
        },
        cliProgress.Presets.shades_classic,
      );
      bar.start(e.sizeBytes, 0, { done: humanSize(0), size: humanSize(e.sizeBytes), speed: '-' });
      t0 = performance.now();
    } else if (e.type === 'disk-progress' && bar && `${e.vm}/${e.disk}` === shown) {
      const now = performance.now();
      if (now - lastUpdate < 100 && e.doneBytes < e.sizeBytes) return;
      lastUpdate = now;
      const secs = (now - t0) / 1000;
      bar.update(e.doneBytes, { done: humanSize(e.doneBytes), speed: secs > 0 ? humanSize(e.doneBytes / secs) : '-' });
    } else if (e.type === 'disk-end' && `${e.report.vm}/${e.report.disk}` === shown) {
      stop();
    }
  };
  return { onProgress, stop };
}
