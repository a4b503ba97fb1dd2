import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
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

/** Skips the suite, saying why, when QEMU is missing or apt cannot provide the guest; any other failure fails. */
export async function skipUnlessGuestCanBoot(ctx: Mocha.Context): Promise<void> {
  ctx.timeout(240_000); // the first run downloads and builds the guest image
  const available = isAvailable();
  if (!available.available) {
    console.warn(`      skipping the test VM: ${available.reason}`);
    ctx.skip();
  }
  try {
    await ensureGuestImage();
  } catch (err) {
    if (!(err instanceof GuestImageUnavailableError)) throw err;
    console.warn(`      skipping the test VM: ${err.message}`);
    ctx.skip();
  }
}

