import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { FerryError } from '../errors.js';

const run = promisify(execFile);

/**
 * Whether this machine can attach an NBD export as a block device: the kernel's `nbd` module loaded
 * (or loadable with `modprobe nbd`) and `nbd-client` (Debian package nbd-client) installed. Resolves
 * with the free `/dev/nbdN` devices, or rejects with MOUNT_UNAVAILABLE saying what is missing.
 */
export async function kernelNbdDevices(): Promise<string[]> {
  if (!existsSync('/sys/module/nbd')) {
    const tried = await run('modprobe', ['nbd']).then(
      () => '',
      (err: NodeJS.ErrnoException & { stderr?: string }) => (err.code === 'ENOENT' ? 'modprobe is not installed' : `modprobe nbd failed: ${(err.stderr || err.message).trim()}`),
    );
    if (!existsSync('/sys/module/nbd')) {
      throw new FerryError(
        'MOUNT_UNAVAILABLE',
        `the kernel's nbd module is not loaded and cannot be loaded here (${tried || 'modprobe nbd loaded nothing'}); ` +
          'serve the point with `ferry serve` and read it with a user-space client (qemu-img, nbdcopy, nbdfuse) instead',
        { object: '/sys/module/nbd' },
      );
    }
  }
  const ok = await run('nbd-client', ['--help']).then(
    () => true,
    (err: NodeJS.ErrnoException) => err.code !== 'ENOENT',
  );
  if (!ok) throw new FerryError('MOUNT_UNAVAILABLE', 'nbd-client is not installed (Debian package nbd-client)', { object: 'nbd-client' });
  const devices = readdirSync('/sys/block')
    .filter((d) => /^nbd\d+$/.test(d))
    .sort((a, b) => Number(a.slice(3)) - Number(b.slice(3)));
  // A device in use has a pid file (the process holding its socket).
  const free = devices.filter((d) => !existsSync(`/sys/block/${d}/pid`)).map((d) => `/dev/${d}`);
  if (free.length === 0) throw new FerryError('MOUNT_UNAVAILABLE', `no free /dev/nbdN device (${devices.length} in use); load the module with more (modprobe nbd nbds_max=N)`, { object: '/dev/nbd*' });
  return free;
}

/** Attaches `socket`'s export to `device` read-only (the export says so); resolves once attached. */
export async function attachNbdDevice(device: string, socket: string, exportName: string): Promise<void> {
  await run('nbd-client', ['-unix', socket, device, '-N', exportName]).catch((err: NodeJS.ErrnoException & { stderr?: string }) => {
    throw new FerryError('MOUNT_UNAVAILABLE', `nbd-client could not attach ${device}: ${(err.stderr || err.message).trim()}`, { object: device });
  });
}

export async function detachNbdDevice(device: string): Promise<void> {
  await run('nbd-client', ['-d', device]);
}
