import { readFileSync } from 'node:fs';

/** This machine's boot id (`/proc/sys/kernel/random/boot_id`), unique per boot of a Linux kernel. */
export function localBootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

/**
 * Why freezing must be refused when the "guest" is the backup server's own machine (same boot id,
 * e.g. reached over SSH on loopback): freezing its root or every file system would stop the
 * backup itself (and everything else on it). Only file systems named in `mounts`, other than `/`,
 * may be frozen there. Undefined: go ahead.
 */
export function ownMachineRefusal(guestBootId: string | undefined, local: string | undefined, mounts: string[] | undefined): string | undefined {
  if (!guestBootId || !local || guestBootId !== local) return undefined;
  if (!mounts?.length) return 'the guest is the machine this backup runs on: freezing all its file systems would stop the backup itself; name the file systems to freeze in guest.mounts';
  if (mounts.some((m) => m.replace(/\/+$/, '') === '')) return 'the guest is the machine this backup runs on: its root file system cannot be frozen by its own backup';
  return undefined;
}
