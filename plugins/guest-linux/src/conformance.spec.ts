import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPluginForTest, runGuestRuntimeConformance } from '@ferry/core/testing';
import { makeLoopMount, SSHD, startSshdGuest } from '@ferry/guest-common/testing';

const PACKAGE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

// The core's guest runtime suite against this package as a job loads it, with a real sshd on
// loopback as the guest and a loop-mounted ext4 the harness makes as the only file system frozen.
runGuestRuntimeConformance(
  'linux over ssh',
  async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-conformance-guest-'));
    const sshd = await startSshdGuest(path.join(dir, 'sshd'));
    const fs = makeLoopMount(dir);
    return {
      runtime: await loadPluginForTest(PACKAGE, 'guest-runtime', 'linux'),
      options: {
        os: 'linux',
        via: 'ssh',
        host: sshd.host,
        port: sshd.port,
        user: sshd.user,
        credentials: { privateKey: readFileSync(sshd.userKey), knownHosts: readFileSync(sshd.knownHosts, 'utf8') },
        freeze: 'fsfreeze',
        mounts: [fs.mountPoint],
        scripts: {},
        applications: [],
        timeoutSeconds: 3,
      },
      isFrozen: async () => !(await fs.writable(700)),
      // the connection dies as with a killed backup server (the runtime's own channel, closed under
      // it); its folder is removed too, as nobody will
      abandon: async (s) => {
        const session = s as unknown as { channel: { close(): Promise<void> }; dir: string };
        await session.channel.close();
        rmSync(session.dir, { recursive: true, force: true });
      },
      cleanup: async () => {
        fs.remove();
        await sshd.stop();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
  {
    needs: { 'ssh-keygen': 'openssh-client', fsfreeze: 'util-linux', 'mkfs.ext4': 'e2fsprogs', ...(existsSync(SSHD) ? {} : { sshd: 'openssh-server' }) },
    skipReason: () => (process.getuid?.() === 0 ? undefined : 'needs root (sshd logs in as root; loop mounts)'),
  },
);
