import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { skipBecause, skipForMissingTools } from '@ferry/core/testing';
import { ensureGuestImage, findTool, GuestImageUnavailableError, isAvailable } from './test-vm.js';

const execFileAsync = promisify(execFile);

/** Runs a host tool; resolves with its exit code instead of throwing, so e2fsck's verdict can be asserted. */
export async function hostTool(name: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await execFileAsync(findTool(name) ?? name, args, { encoding: 'latin1', maxBuffer: 16 << 20 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, stdout: e.stdout ?? '', stderr: e.stderr ?? '' };
  }
}

/**
 * Skips the suite, saying why, when a tool is missing (fails instead under CI), the platform is not
 * linux/x64, or apt cannot provide the guest's packages; any other failure fails.
 */
export async function skipUnlessGuestCanBoot(ctx: Mocha.Context): Promise<void> {
  ctx.timeout(240_000); // the first run downloads and builds the guest image
  const available = isAvailable();
  if (available.missing) skipForMissingTools(ctx, available.missing);
  if (!available.available) skipBecause(ctx, `no test VM: ${available.reason}`);
  try {
    await ensureGuestImage();
  } catch (err) {
    if (!(err instanceof GuestImageUnavailableError)) throw err;
    skipBecause(ctx, `no test VM: ${err.message}`);
  }
}

