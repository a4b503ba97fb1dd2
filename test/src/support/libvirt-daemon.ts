import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { skipBecause, skipUnlessTools } from '@ferry/core/testing';
import { parseDomain } from '@ferry/source-libvirt';
import { freePort, ROOT } from './helpers.js';

export { freePort };

/**
 * A private libvirtd for one spec, started by the test itself and serving `qemu:///system` on its
 * own socket. libvirt's system daemon has fixed state folders (/run/libvirt, /var/lib/libvirt,
 * /var/cache/libvirt, /var/log/libvirt, /etc/libvirt); the daemon runs in a private mount
 * namespace (`unshare -m`) where each of those is this test's own folder (the cache: a shared one), so it never sees the
 * machine's or another test's domains, and its sockets land in `<dir>/run`. QEMU inherits the
 * namespace; every other path (disk images, NBD sockets, consoles) is the host's own.
 *
 * `qemu.conf` runs QEMU as root without cgroups, security labels or its own namespaces (a
 * container has none of them to offer) and writes QEMU's output to files, so no virtlogd is needed.
 */
export interface LibvirtDaemon {
  /** The daemon's own folder (state, config, logs, sockets under `run/`). */
  dir: string;
  /** `qemu:///system?socket=<dir>/run/libvirt-sock`: what a job's `source.uri` names. */
  uri: string;
  /** Runs `virsh -c <uri> ...args` and returns stdout; throws with stderr when it fails. */
  virsh(...args: string[]): string;
  /** virsh that returns instead of throwing. */
  tryVirsh(...args: string[]): { status: number | null; stdout: string; stderr: string };
  /** The daemon's log (its stderr). */
  log(): string;
  /** Destroys and undefines every domain, kills leftover QEMU processes, stops the daemon. */
  stop(): Promise<void>;
}

export const LIBVIRT_TOOLS = { libvirtd: 'libvirt-daemon', virsh: 'libvirt-clients', unshare: 'util-linux', 'qemu-system-x86_64': 'qemu-system-x86' };

/** Skips (or, under CI, fails) unless the tools are there; skips when not root (the system daemon needs it). */
export function skipUnlessLibvirt(ctx: Mocha.Context): void {
  skipUnlessTools(ctx, LIBVIRT_TOOLS);
  if (process.getuid?.() !== 0) skipBecause(ctx, 'a private libvirtd (qemu:///system in its own mount namespace) needs root');
  const driver = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib64', '/usr/lib'].some((d) =>
    existsSync(path.join(d, 'libvirt', 'connection-driver', 'libvirt_driver_qemu.so')),
  );
  if (!driver) skipUnlessTools(ctx, { 'libvirt_driver_qemu.so': 'libvirt-daemon-driver-qemu' });
}

const LIBVIRTD_CONF = `# a test's private libvirtd: unix sockets only, root only
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "2:stderr"
`;

const QEMU_CONF = `# a test's private libvirtd: QEMU as root, nothing a container cannot offer
user = "root"
group = "root"
swtpm_user = "root"
swtpm_group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
`;

/** Inside the namespace: the private folders over libvirt's fixed ones, then the daemon itself. */
const START = `set -e
D="$1"
for pair in run:/run/libvirt lib:/var/lib/libvirt log:/var/log/libvirt etc:/etc/libvirt; do
  mkdir -p "\${pair#*:}"
  mount --bind "$D/\${pair%%:*}" "\${pair#*:}"
done
mkdir -p /var/cache/libvirt
mount --bind "$2" /var/cache/libvirt
exec libvirtd -f "$D/etc/libvirtd.conf" -p "$D/libvirtd.pid"
`;

/**
 * QEMU's capabilities as libvirtd probed them (about 7 s of probing per fresh daemon); libvirt
 * re-probes by itself when the QEMU binary changes.
 */
export const LIBVIRT_CACHE_DIR = path.join(ROOT, '.cache', 'libvirt');

/**
 * Starts the daemon in `dir` (a fresh temp folder the caller removes) and waits for its socket.
 * `qemuConf`: more qemu.conf lines (e.g. `backup_tls_x509_cert_dir`).
 */
export async function startLibvirtd(dir: string, opts: { qemuConf?: string; readyMs?: number } = {}): Promise<LibvirtDaemon> {
  const readyMs = opts.readyMs ?? 30_000;
  for (const sub of ['run', 'lib', 'log', 'etc']) mkdirSync(path.join(dir, sub), { recursive: true });
  mkdirSync(LIBVIRT_CACHE_DIR, { recursive: true });
  writeFileSync(path.join(dir, 'etc', 'libvirtd.conf'), LIBVIRTD_CONF);
  writeFileSync(path.join(dir, 'etc', 'qemu.conf'), QEMU_CONF + (opts.qemuConf ?? ''));
  writeFileSync(path.join(dir, 'start.sh'), START);
  const socket = path.join(dir, 'run', 'libvirt-sock');
  const uri = `qemu:///system?socket=${socket}`;
  // detached: its own process group, stopped as a whole
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', path.join(dir, 'start.sh'), dir, LIBVIRT_CACHE_DIR], {
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    if (stderr.length < 1_000_000) stderr += d.toString();
  });
  const tryVirsh = (...args: string[]): { status: number | null; stdout: string; stderr: string } => {
    const r = spawnSync('virsh', ['-q', '-c', uri, ...args], { encoding: 'utf8', timeout: 60_000, maxBuffer: 16 << 20 });
    return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? String(r.error ?? '') };
  };
  const virsh = (...args: string[]): string => {
    const r = tryVirsh(...args);
    if (r.status !== 0) throw new Error(`virsh ${args.join(' ')} failed (${r.status}): ${r.stderr.trim()}`);
    return r.stdout;
  };
  const daemon: LibvirtDaemon = { dir, uri, virsh, tryVirsh, log: () => stderr, stop: () => stopDaemon(child, dir, tryVirsh) };
  const deadline = Date.now() + readyMs;
  for (;;) {
    if (existsSync(socket) && tryVirsh('version').status === 0) return daemon;
    if (child.exitCode !== null || Date.now() > deadline) {
      await daemon.stop();
      throw new Error(`libvirtd did not come up on ${socket}: ${stderr.slice(-4000) || `exit ${child.exitCode}`}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function stopDaemon(child: ChildProcess, dir: string, virsh: LibvirtDaemon['tryVirsh']): Promise<void> {
  // QEMU processes leave libvirtd's process group (they are daemons): kill them by their pid files,
  // first: `virsh destroy` of a live QEMU waits ~2 s per domain for it to go after SIGTERM.
  const qemuRun = path.join(dir, 'run', 'qemu');
  for (const f of existsSync(qemuRun) ? readdirSync(qemuRun).filter((n) => n.endsWith('.pid')) : []) {
    const pid = Number(readFileSync(path.join(qemuRun, f), 'utf8').trim());
    if (Number.isInteger(pid) && pid > 1) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  if (child.exitCode === null && child.signalCode === null) {
    const names = virsh('list', '--all', '--name').stdout.split('\n').map((s) => s.trim()).filter(Boolean);
    for (const name of names) {
      virsh('destroy', name);
      virsh('undefine', name, '--checkpoints-metadata', '--nvram');
    }
  }
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const group = -child.pid;
  try {
    process.kill(group, 'SIGTERM');
  } catch {
    return;
  }
  const timer = setTimeout(() => {
    try {
      process.kill(group, 'SIGKILL');
    } catch {
      /* gone meanwhile */
    }
  }, 5000);
  await gone;
  clearTimeout(timer);
}

export interface TestDomainDisk {
  dev: string;
  file: string;
  format: 'qcow2' | 'raw';
  /** `cdrom` and read-only disks are for the inventory's skip list. */
  device?: 'disk' | 'cdrom';
  readonly?: boolean;
}

/**
 * A TCG domain with disks and no OS: SeaBIOS finds nothing to boot and the domain idles in the
 * `running` state, which is all a pull-mode backup needs. `agentSocket` adds the guest agent
 * channel at that path (a host path: libvirt's default would be inside the daemon's namespace).
 */
export function diskOnlyDomainXml(name: string, disks: TestDomainDisk[], opts: { agentSocket?: string; console?: string; mac?: string } = {}): string {
  const diskXml = disks.map((d) => {
    const device = d.device ?? 'disk';
    const bus = device === 'cdrom' ? 'sata' : 'virtio';
    return `    <disk type='file' device='${device}'>
      <driver name='qemu' type='${d.format}'/>
      <source file='${d.file}'/>
      <target dev='${d.dev}' bus='${bus}'/>${d.readonly ? '\n      <readonly/>' : ''}
    </disk>`;
  });
  return `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${diskXml.join('\n')}
${opts.console ? `    <serial type='file'><source path='${opts.console}'/></serial>` : ''}
${opts.mac ? `    <interface type='user'><mac address='${opts.mac}'/><model type='virtio'/></interface>` : ''}
${opts.agentSocket ? `    <channel type='unix'><source mode='bind' path='${opts.agentSocket}'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel>` : ''}
  </devices>
</domain>
`;
}

/**
 * Writes `pattern` at `offset` into the running domain's disk `dev` through QEMU's own block layer
 * (`qemu-io` over the monitor): the write QEMU's dirty bitmaps see, as a guest's would be. Test-only:
 * it taints the domain, which Ferry itself never does.
 */
export function guestWrite(d: LibvirtDaemon, domain: string, dev: string, offset: number, length: number, pattern: number): void {
  const qdev = `/machine/peripheral/${diskAlias(d, domain, dev)}/virtio-backend`;
  // then a flush: QEMU's qcow2 metadata cache reaches the image, so `qemu-img compare -U` sees the write
  for (const cmd of [`write -P ${pattern} ${offset} ${length}`, 'flush']) {
    const out = d.virsh('qemu-monitor-command', domain, '--hmp', `qemu-io -d ${qdev} "${cmd}"`);
    if (out.trim()) throw new Error(`qemu-io ${cmd} on ${domain}/${dev}: ${out.trim()}`);
  }
}

function diskAlias(d: LibvirtDaemon, domain: string, dev: string): string {
  const alias = parseDomain(d.virsh('dumpxml', domain)).disks.find((x) => x.dev === dev)?.alias;
  if (!alias) throw new Error(`no running disk ${dev} in domain ${domain}`);
  return alias;
}

export const SSH_TOOLS = { sshd: 'openssh-server', ssh: 'openssh-client', 'ssh-keygen': 'openssh-client', nsenter: 'util-linux' };

export interface SshFront {
  /** `qemu+ssh://root@127.0.0.1:PORT/system?keyfile=...`: the daemon reached over SSH. */
  uri: string;
  stop(): Promise<void>;
}

/**
 * An sshd on loopback with its own host key, client key and config, running in the daemon's mount
 * namespace: there libvirt's default socket (/run/libvirt/libvirt-sock) is this daemon's, so
 * `qemu+ssh://.../system` reaches it as a remote host's daemon would be reached (libvirt's
 * `virt-ssh-helper` on the far side, `proxy=native`). Stopped by process group.
 */
export async function startSshFront(d: LibvirtDaemon, dir: string): Promise<SshFront> {
  mkdirSync(dir, { recursive: true });
  mkdirSync('/run/sshd', { recursive: true });
  for (const k of ['host_key', 'client_key']) {
    const r = spawnSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', path.join(dir, k)], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
  }
  writeFileSync(path.join(dir, 'authorized_keys'), readFileSync(path.join(dir, 'client_key.pub')));
  const port = await freePort();
  writeFileSync(
    path.join(dir, 'sshd_config'),
    [`Port ${port}`, 'ListenAddress 127.0.0.1', `HostKey ${dir}/host_key`, `AuthorizedKeysFile ${dir}/authorized_keys`, 'PermitRootLogin prohibit-password', 'PasswordAuthentication no', 'StrictModes no', 'UsePAM no', `PidFile ${dir}/sshd.pid`, ''].join('\n'),
  );
  const pid = readFileSync(path.join(d.dir, 'libvirtd.pid'), 'utf8').trim();
  const child = spawn('nsenter', [`--mount=/proc/${pid}/ns/mnt`, '/usr/sbin/sshd', '-D', '-e', '-f', path.join(dir, 'sshd_config')], { detached: true, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (b: Buffer) => {
    if (stderr.length < 100_000) stderr += b.toString();
  });
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
    const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      return;
    }
    await gone;
  };
  const deadline = Date.now() + 10_000;
  while (!stderr.includes('Server listening')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop();
      throw new Error(`sshd did not start: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { uri: `qemu+ssh://root@127.0.0.1:${port}/system?keyfile=${dir}/client_key&no_verify=1&proxy=native`, stop };
}

