import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import path from 'node:path';

/** Where Debian's openssh-server puts the daemon (not on a non-root PATH). */
export const SSHD = '/usr/sbin/sshd';

/** A real `sshd` on 127.0.0.1 acting as a Linux guest, with its own config, keys and pid file in `dir`. */
export interface SshdGuest {
  host: string;
  port: number;
  user: string;
  /** The client's private key (its public half is the only authorized key). */
  userKey: string;
  /** A known_hosts file with this daemon's host key. */
  knownHosts: string;
  /** A known_hosts file naming the same host with another key. */
  wrongKnownHosts: string;
  /** A known_hosts file with only the daemon's second host key, an ECDSA one. */
  ecdsaKnownHosts: string;
  stop(): Promise<void>;
}

function keygen(file: string, type = 'ed25519'): void {
  execFileSync('ssh-keygen', ['-q', '-t', type, '-N', '', '-C', 'ferry-test', '-f', file], { stdio: 'ignore' });
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as { port: number }).port;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `sshd -D -e` as its own process group (stopped by group) and waits, bounded, until it
 * accepts connections. Runs as root (the test logs in as root with key authentication only).
 * `forceCommand`: every session runs this command instead of the one the client sent (which it
 * finds in `SSH_ORIGINAL_COMMAND`): a simulated guest OS (guest-windows' simulator).
 */
export async function startSshdGuest(dir: string, opts: { forceCommand?: string } = {}): Promise<SshdGuest> {
  mkdirSync(dir, { recursive: true });
  // privilege separation folder Debian's sshd insists on
  if (!existsSync('/run/sshd')) mkdirSync('/run/sshd', { mode: 0o755 });
  const hostKey = path.join(dir, 'host_key');
  const userKey = path.join(dir, 'id_ed25519');
  const otherKey = path.join(dir, 'other_host_key');
  const ecdsaKey = path.join(dir, 'host_key_ecdsa');
  for (const k of [hostKey, userKey, otherKey]) keygen(k);
  keygen(ecdsaKey, 'ecdsa');
  writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(`${userKey}.pub`));
  const port = await freePort();
  const config = path.join(dir, 'sshd_config');
  writeFileSync(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `HostKey ${ecdsaKey}`,
      `PidFile ${path.join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${path.join(dir, 'authorized_keys')}`,
      'PermitRootLogin prohibit-password',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'UsePAM no',
      'StrictModes no',
      'PrintMotd no',
      'LogLevel ERROR',
      ...(opts.forceCommand ? [`ForceCommand ${opts.forceCommand}`] : []),
      '',
    ].join('\n'),
  );
  const pub = (f: string): string => readFileSync(`${f}.pub`, 'utf8').split(' ').slice(0, 2).join(' ');
  const knownHosts = path.join(dir, 'known_hosts');
  writeFileSync(knownHosts, `[127.0.0.1]:${port} ${pub(hostKey)}\n`);
  const ecdsaKnownHosts = path.join(dir, 'ecdsa_known_hosts');
  writeFileSync(ecdsaKnownHosts, `[127.0.0.1]:${port} ${pub(ecdsaKey)}\n`);
  const wrongKnownHosts = path.join(dir, 'wrong_known_hosts');
  writeFileSync(wrongKnownHosts, `[127.0.0.1]:${port} ${pub(otherKey)}\n`);
  const child: ChildProcess = spawn(SSHD, ['-D', '-e', '-f', config], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      process.kill(-child.pid!, 'SIGTERM');
    } catch {
      /* already gone */
    }
    const t = setTimeout(() => {
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, 3000);
    await gone;
    clearTimeout(t);
  };
  const deadline = Date.now() + 10_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`sshd exited: ${stderr}`);
    if (await accepts(port)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`sshd did not listen on 127.0.0.1:${port}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { host: '127.0.0.1', port, user: 'root', userKey, knownHosts, wrongKnownHosts, ecdsaKnownHosts, stop };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });
}

/**
 * A small ext4 file system on a loop device under `dir` (or `opts.image`; `existing`: mount an image
 * already made, such as a restored one), made by the test: the only file system a
 * test may freeze (freezing this machine's own would stop everyone's work).
 */
export interface LoopMount {
  mountPoint: string;
  /** Whether a write to it completes within `ms` (false while frozen). */
  writable(ms?: number): Promise<boolean>;
  remove(): void;
}

export function makeLoopMount(dir: string, opts: { image?: string; sizeMiB?: number; mountPoint?: string; existing?: boolean } = {}): LoopMount {
  const image = opts.image ?? path.join(dir, 'guest-fs.img');
  const mountPoint = opts.mountPoint ?? path.join(dir, 'guest-fs');
  mkdirSync(mountPoint, { recursive: true });
  if (!opts.existing) {
    execFileSync('truncate', ['-s', `${opts.sizeMiB ?? 16}M`, image]);
    execFileSync('mkfs.ext4', ['-q', '-F', image], { stdio: 'ignore' });
  }
  execFileSync('mount', ['-o', 'loop', image, mountPoint]);
  const isLoopMount = (): boolean => readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === mountPoint && l.startsWith('/dev/loop'));
  if (!isLoopMount()) throw new Error(`${mountPoint} is not the loop mount this test made`);
  return {
    mountPoint,
    writable: (ms = 1500) =>
      new Promise<boolean>((resolve) => {
        // A write to a frozen file system waits (uninterruptibly) for the thaw: never wait for it here.
        const probe = spawn('sh', ['-c', `echo x > "$1/probe-$$"`, 'sh', mountPoint], { stdio: 'ignore' });
        const t = setTimeout(() => resolve(false), ms);
        probe.once('exit', (code) => {
          clearTimeout(t);
          resolve(code === 0);
        });
      }),
    remove: () => {
      try {
        execFileSync('fsfreeze', ['-u', mountPoint], { stdio: 'ignore' });
      } catch {
        /* not frozen */
      }
      try {
        execFileSync('umount', [mountPoint], { stdio: 'ignore' });
      } catch {
        execFileSync('umount', ['-l', mountPoint], { stdio: 'ignore' });
      }
    },
  };
}
