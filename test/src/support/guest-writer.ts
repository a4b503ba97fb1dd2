/**
 * The writer workload of the test guest: the files it rewrites and how a test checks them in a
 * restored image. The guest's shell side is in guest-image.ts (`initScript`).
 */

/** What the guest runs after boot, chosen by `ferry.workload=` on the kernel command line. */
export type Workload = 'writer' | 'idle';

/**
 * The writer workload's files: round N rewrites `/mnt/<dir>/wNN.dat` (NN = N mod `files`) with
 * `fileBytes` of the 32-byte line `writerLine(N, NN)`, writing `.tmp` then renaming, then `sync`.
 * So every complete `wNN.dat` in any consistent image holds one round, checkable by `checkWriterFile`.
 */
export const WRITER_LAYOUT = { dir: 'ferry', files: 8, fileBytes: 256 * 1024, lineBytes: 32 } as const;

/** The writer's line for a round and file, exactly `WRITER_LAYOUT.lineBytes` long. */
export function writerLine(round: number, file: number): string {
  return `ferry round ${String(round).padStart(8, '0')} file ${String(file).padStart(2, '0')} ok\n`;
}

/** Checks a complete `wNN.dat` written by the writer workload; returns its round, or throws saying what is wrong. */
export function checkWriterFile(content: Buffer, file: number): number {
  const w = WRITER_LAYOUT;
  if (content.length !== w.fileBytes) throw new Error(`w${String(file).padStart(2, '0')}.dat has ${content.length} bytes, not ${w.fileBytes}`);
  const round = Number(/^ferry round (\d{8}) /.exec(content.subarray(0, w.lineBytes).toString('latin1'))?.[1] ?? NaN);
  if (!Number.isInteger(round)) throw new Error(`w${String(file).padStart(2, '0')}.dat does not start with a writer line`);
  const expected = Buffer.from(writerLine(round, file).repeat(w.fileBytes / w.lineBytes), 'latin1');
  if (!content.equals(expected)) throw new Error(`w${String(file).padStart(2, '0')}.dat mixes rounds or is damaged (round ${round} expected throughout)`);
  return round;
}

/** The last round the writer reported on the console (0: none yet). */
export function lastWriterRound(consoleLog: string): number {
  const rounds = [...consoleLog.matchAll(/ferry-guest: writer round (\d+) /g)];
  return rounds.length ? Number(rounds[rounds.length - 1][1]) : 0;
}
