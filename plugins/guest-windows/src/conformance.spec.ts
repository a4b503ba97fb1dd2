import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { GuestOptions } from '@ferry/core/plugin';
import { loadPluginForTest, runGuestRuntimeConformance } from '@ferry/core/testing';
import { SSHD } from '@ferry/guest-common/testing';
import { startWindowsSimGuest, type FakeQga, type WindowsSimGuest } from './testing/windows-sim-guest.js';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const needs = { 'ssh-keygen': 'openssh-client', ...(existsSync(SSHD) ? {} : { sshd: 'openssh-server' }) };
const skipReason = (): string | undefined => (process.getuid?.() === 0 ? undefined : 'needs root (sshd logs in as root)');

async function harnessGuest(): Promise<{ dir: string; guest: WindowsSimGuest; options: GuestOptions }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-windows-conformance-'));
  const guest = await startWindowsSimGuest(dir);
  const options: GuestOptions = {
    os: 'windows',
    via: 'ssh',
    host: guest.host,
    port: guest.port,
    user: guest.user,
    credentials: { privateKey: readFileSync(guest.userKey), knownHosts: readFileSync(guest.knownHosts, 'utf8') },
    freeze: 'auto',
    mounts: ['C:'],
    scripts: {},
    applications: [],
    timeoutSeconds: 3,
  };
  return { dir, guest, options };
}

// The core's guest runtime suite against this package as a job loads it, the Windows simulator
// behind a real sshd as the guest: first with a DiskShadow set (frozen: its holder runs), then with
// the fake qemu-ga's VSS freeze (frozen: what guest-fsfreeze-status would say).
runGuestRuntimeConformance(
  'windows over ssh (DiskShadow set)',
  async () => {
    const { dir, guest, options } = await harnessGuest();
    const temp = path.join(guest.sim, 'C', 'Users', 'ferry', 'AppData', 'Local', 'Temp');
    return {
      runtime: await loadPluginForTest(PACKAGE, 'guest-runtime', 'windows'),
      options,
      isFrozen: async () => existsSync(temp) && readdirSync(temp).some((d) => existsSync(path.join(temp, d, 'diskshadow.pid'))),
      // the connection dies as with a killed backup server
      abandon: async (s) => (s as unknown as { ps: { channel: { close(): Promise<void> } } }).ps.channel.close(),
      cleanup: async () => {
        await guest.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  { needs, skipReason },
);

runGuestRuntimeConformance(
  'windows over ssh with qemu-ga (VSS provider)',
  async () => {
    const { dir, guest, options } = await harnessGuest();
    // VSS lets go of held writes after 10 s; the fake lets go after 4 s to keep the suite quick
    const qga: FakeQga = await guest.startAgent({ holdLimitMs: 4000 });
    return {
      runtime: await loadPluginForTest(PACKAGE, 'guest-runtime', 'windows'),
      options: { ...options, agent: qga.agent, freeze: 'agent' },
      isFrozen: async () => qga.status() === 'frozen',
      abandon: async (s) => {
        const x = s as unknown as { ps: { channel: { close(): Promise<void> } }; agent: { close(): Promise<void> } };
        await x.ps.channel.close();
        await x.agent.close();
      },
      cleanup: async () => {
        await guest.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  { needs, skipReason },
);
