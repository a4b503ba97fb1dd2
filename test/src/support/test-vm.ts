/**
 * A real Linux guest under QEMU TCG for tests, built from Debian's packages (recipe:
 * shared/TESTVM.md, summary in test/README.md).
 *
 * - `ensureGuestImage` builds a kernel + busybox/qemu-ga initramfs once and caches it.
 * - `makeDataDisk` makes the ext4 data disk the guest mounts on /mnt.
 * - `startVm` boots the guest with a workload and returns once its guest agent answers.
 *
 * Every QEMU started here dies with the test process: `stop()`, a process-exit hook, and (where
 * `setpriv` exists) the kernel's parent-death signal, so a crashed mocha leaves no guest behind.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, renameSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { promisify } from 'node:util';
import { ROOT } from './helpers.js';

/** The cache key of the guest image: bump it whenever the recipe below changes, so caches rebuild. */
export const GUEST_IMAGE_VERSION = 'ferry-guest-2';

/** Where built guest images live (`.cache/` is gitignored); `FERRY_TEST_VM_CACHE` moves it, e.g. for CI. */
export const GUEST_CACHE_DIR: string = process.env.FERRY_TEST_VM_CACHE ?? path.join(ROOT, '.cache', 'test-vm');

/** What the guest runs after boot, chosen by `ferry.workload=` on the kernel command line. */
export type Workload = 'writer' | 'idle';

/**
 * The writer workload's files: round N rewrites `/mnt/<dir>/wNN.dat` (NN = N mod `files`) with
 * `fileBytes` of the 32-byte line `writerLine(N, NN)`, writing `.tmp` then renaming, then `sync`.
 * So every complete `wNN.dat` in any consistent image holds one round, checkable by `checkWriterFile`.
 */
export const WRITER_LAYOUT = { dir: 'ferry', files: 8, fileBytes: 256 * 1024, lineBytes: 32 } as const;

/**
 * The virtio modules the guest needs (ext4, jbd2, crc32c are built into Debian's cloud kernel). The
 * load order comes from the modules' own `depends=`: virtio needs virtio_ring, so TESTVM.md's list
 * order fails with "unknown symbol".
 */
const MODULES = ['virtio', 'virtio_ring', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk', 'virtio_console'];
const QGA_PORT_NAME = 'org.qemu.guest_agent.0';
const execFileAsync = promisify(execFile);

// ---------------------------------------------------------------------------------------------
// Tools and availability

/** Finds a tool on PATH or in the sbin folders a non-root PATH often lacks (mkfs.ext4, e2fsck). */
export function findTool(name: string): string | undefined {
  const dirs = [...(process.env.PATH ?? '').split(':'), '/usr/local/sbin', '/usr/sbin', '/sbin'];
  for (const dir of dirs.filter(Boolean)) {
    const file = path.join(dir, name);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      // not in this folder
    }
  }
  return undefined;
}

export interface VmAvailability {
  available: boolean;
  /** Why not, naming the missing tool and its Debian package. */
  reason?: string;
}

/**
 * Whether this machine can run the test VM. Apt is needed only until the image is cached;
 * whether apt can still serve the kernel is known only when `ensureGuestImage` tries.
 */
export function isAvailable(cacheDir: string = GUEST_CACHE_DIR): VmAvailability {
  if (process.platform !== 'linux' || process.arch !== 'x64') return { available: false, reason: `the test VM needs linux/x64, not ${process.platform}/${process.arch}` };
  const needed: Record<string, string> = { 'qemu-system-x86_64': 'qemu-system-x86', 'qemu-img': 'qemu-utils', 'mkfs.ext4': 'e2fsprogs' };
  if (!existsSync(manifestPath(cacheDir))) Object.assign(needed, { 'apt-get': 'apt', 'apt-cache': 'apt', 'dpkg-deb': 'dpkg', ldd: 'libc-bin' });
  const missing = Object.entries(needed).filter(([tool]) => !findTool(tool));
  if (missing.length === 0) return { available: true };
  return { available: false, reason: `missing ${missing.map(([tool, pkg]) => `${tool} (Debian package ${pkg})`).join(', ')}` };
}

/** Runs a tool to completion; the error names the command and carries its stderr. */
async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<string> {
  try {
    const env = { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' };
    const { stdout } = await execFileAsync(findTool(cmd) ?? cmd, args, { cwd: opts.cwd, env, maxBuffer: 64 << 20 });
    return stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.stderr?.trim() || e.message}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The guest image

/** Thrown when apt cannot provide the guest's packages: tests skip on this, and fail on anything else. */
export class GuestImageUnavailableError extends Error {
  override readonly name = 'GuestImageUnavailableError';
}

export interface GuestManifest {
  version: string;
  kernelRelease: string;
  /** Debian package name → version, for every package the image was built from. */
  packages: Record<string, string>;
  modules: string[];
  builtAt: string;
}

export interface GuestImage {
  kernel: string;
  initrd: string;
  manifest: GuestManifest;
}

function imageDir(cacheDir: string): string {
  return path.join(cacheDir, GUEST_IMAGE_VERSION);
}

function manifestPath(cacheDir: string): string {
  return path.join(imageDir(cacheDir), 'manifest.json');
}

function readImage(cacheDir: string): GuestImage {
  const dir = imageDir(cacheDir);
  const manifest = JSON.parse(readFileSync(manifestPath(cacheDir), 'utf8')) as GuestManifest;
  return { kernel: path.join(dir, 'vmlinuz'), initrd: path.join(dir, 'initrd.img'), manifest };
}

const building = new Map<string, Promise<GuestImage>>();

/**
 * The cached guest image, built first when missing. Builds happen in a private temp folder that is
 * renamed into place whole, so concurrent builders (other test processes) never see a half image:
 * the first rename wins and the others use its result.
 */
export function ensureGuestImage(cacheDir: string = GUEST_CACHE_DIR): Promise<GuestImage> {
  if (existsSync(manifestPath(cacheDir))) return Promise.resolve(readImage(cacheDir));
  let pending = building.get(cacheDir);
  if (!pending) {
    pending = buildGuestImage(cacheDir).finally(() => building.delete(cacheDir));
    building.set(cacheDir, pending);
  }
  return pending;
}

async function buildGuestImage(cacheDir: string): Promise<GuestImage> {
  mkdirSync(cacheDir, { recursive: true });
  const work = mkdtempSync(path.join(cacheDir, '.build-'));
  try {
    const debs = await downloadGuestPackages(path.join(work, 'debs'));
    const out = path.join(work, 'out');
    mkdirSync(out);
    const manifest = await assembleImage(debs, work, out);
    writeFileSync(path.join(out, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    try {
      renameSync(out, imageDir(cacheDir));
    } catch (err) {
      // another process finished first: its image is as good as ours
      if (!existsSync(manifestPath(cacheDir))) throw err;
    }
    return readImage(cacheDir);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Downloads the kernel, busybox-static and qemu-guest-agent .debs; refreshes stale apt lists once. */
async function downloadGuestPackages(dir: string): Promise<Map<string, string>> {
  mkdirSync(dir, { recursive: true });
  try {
    return await downloadOnce(dir);
  } catch (first) {
    // Debian drops superseded kernel ABIs from the archive: old lists name .debs that are gone.
    if (process.getuid?.() !== 0) throw new GuestImageUnavailableError(`apt cannot provide the guest packages: ${(first as Error).message}`);
    await run('apt-get', ['update', '-qq']).catch(() => undefined);
    rmSync(dir, { recursive: true, force: true }); // no .debs of the first try beside the second's
    mkdirSync(dir);
    return downloadOnce(dir).catch((err: Error) => Promise.reject(new GuestImageUnavailableError(`apt cannot provide the guest packages: ${err.message}`)));
  }
}

/** Package name → downloaded .deb path. */
async function downloadOnce(dir: string): Promise<Map<string, string>> {
  const kernel = await resolveKernelPackage();
  // as root, apt's _apt sandbox user cannot write into our private temp folder
  const sandbox = process.getuid?.() === 0 ? ['-o', 'APT::Sandbox::User=root'] : [];
  await run('apt-get', [...sandbox, 'download', kernel, 'busybox-static', 'qemu-guest-agent'], { cwd: dir });
  const debs = new Map<string, string>();
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.deb'))) {
    const name = (await run('dpkg-deb', ['-f', path.join(dir, file), 'Package'])).trim();
    debs.set(name === kernel ? 'kernel' : name, path.join(dir, file));
  }
  return debs;
}

/** `linux-image-cloud-amd64` is a metapackage: the kernel is the versioned package it depends on. */
async function resolveKernelPackage(): Promise<string> {
  const out = await run('apt-cache', ['depends', 'linux-image-cloud-amd64']);
  const match = /^\s*\|?Depends:\s+(linux-image-[^\s<>]+)\s*$/m.exec(out);
  if (!match) throw new Error(`apt-cache depends linux-image-cloud-amd64 names no kernel package:\n${out}`);
  return match[1];
}

/** Unpacks each .deb; returns the folders (by package key) and the Debian versions for the manifest. */
async function unpackAll(debs: Map<string, string>, into: string): Promise<{ dirs: Record<string, string>; packages: Record<string, string> }> {
  const dirs: Record<string, string> = {};
  const packages: Record<string, string> = {};
  for (const [key, deb] of debs) {
    dirs[key] = path.join(into, key);
    mkdirSync(dirs[key], { recursive: true });
    await run('dpkg-deb', ['-x', deb, dirs[key]]);
    const [name, version] = (await run('dpkg-deb', ['-f', deb, 'Package', 'Version'])).trim().split('\n');
    packages[name.replace(/^Package:\s*/, '')] = version.replace(/^Version:\s*/, '');
  }
  for (const key of ['kernel', 'busybox-static', 'qemu-guest-agent']) if (!dirs[key]) throw new Error(`apt-get download brought no ${key} package`);
  return { dirs, packages };
}

async function assembleImage(debs: Map<string, string>, work: string, out: string): Promise<GuestManifest> {
  const { dirs, packages } = await unpackAll(debs, path.join(work, 'pkg'));
  const vmlinuz = readdirSync(path.join(dirs.kernel, 'boot')).find((f) => f.startsWith('vmlinuz-'));
  if (!vmlinuz) throw new Error('the kernel package has no boot/vmlinuz-*');
  const kernelRelease = vmlinuz.slice('vmlinuz-'.length);
  copyFileSync(path.join(dirs.kernel, 'boot', vmlinuz), path.join(out, 'vmlinuz'));
  const root = path.join(work, 'root');
  const busybox = installBusybox(dirs['busybox-static'], root);
  const modules = await installModules(path.join(dirs.kernel, 'lib', 'modules', kernelRelease), root, busybox);
  await installAgent(dirs['qemu-guest-agent'], root);
  writeFileSync(path.join(root, 'init'), initScript(modules), { mode: 0o755 });
  writeFileSync(path.join(root, 'sbin', 'shutdown'), SHUTDOWN_SCRIPT, { mode: 0o755 });
  // busybox's own cpio writes the newc format the kernel unpacks: no host cpio package needed
  await run('bash', ['-c', 'set -o pipefail; find . | "$1" cpio -o -H newc 2>/dev/null | gzip -9 > "$2"', 'pack', busybox, path.join(out, 'initrd.img')], { cwd: root });
  return { version: GUEST_IMAGE_VERSION, kernelRelease, packages, modules, builtAt: new Date().toISOString() };
}

/** Lays out the initramfs folders and busybox; returns the unpacked busybox binary (its cpio/xz serve the build). */
function installBusybox(unpacked: string, root: string): string {
  // qemu-ga keeps its pid file and state in /var/run
  for (const dir of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'proc', 'sys', 'dev', 'mnt', 'run', 'tmp', 'modules', 'var/run']) mkdirSync(path.join(root, dir), { recursive: true });
  const busybox = path.join(unpacked, 'bin', 'busybox');
  copyFileSync(busybox, path.join(root, 'bin', 'busybox'));
  return busybox;
}

/**
 * Copies the virtio modules and what they depend on into /modules, returning them in load order
 * (dependencies first, read from each module's `depends=`), skipping any this kernel has built in.
 */
async function installModules(modDir: string, root: string, busybox: string): Promise<string[]> {
  const files = moduleFiles(path.join(modDir, 'kernel'));
  const builtin = readFileSync(path.join(modDir, 'modules.builtin'), 'utf8');
  const order: string[] = [];
  const visit = async (name: string, from: string): Promise<void> => {
    if (order.includes(name)) return;
    const file = files.get(name);
    if (!file) {
      if (new RegExp(`/${name}\\.ko$`, 'm').test(builtin)) return;
      throw new Error(`kernel module ${name} (${from}) is neither in the kernel package nor built in`);
    }
    // busybox insmod cannot read compressed modules (newer Debian kernels ship .ko.xz)
    const content = file.endsWith('.xz') ? await runBinary(busybox, ['xz', '-dc', file]) : readFileSync(file);
    for (const dep of moduleDepends(content)) await visit(dep, `needed by ${name}`);
    writeFileSync(path.join(root, 'modules', `${name}.ko`), content);
    order.push(name);
  };
  for (const name of MODULES) await visit(name, 'wanted');
  return order;
}

/** Module name (dashes as underscores, as the kernel names them) → its file under `dir`. */
function moduleFiles(dir: string, files = new Map<string, string>()): Map<string, string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (e.isDirectory()) moduleFiles(path.join(dir, e.name), files);
    else if (/\.ko(\.xz)?$/.test(e.name)) files.set(e.name.replace(/\.ko(\.xz)?$/, '').replaceAll('-', '_'), path.join(dir, e.name));
  }
  return files;
}

/** The `depends=` entry of a module's .modinfo section: NUL-separated `key=value` strings. */
function moduleDepends(content: Buffer): string[] {
  const at = content.indexOf('\0depends=');
  if (at < 0) return [];
  const start = at + '\0depends='.length;
  const value = content.subarray(start, content.indexOf(0, start)).toString('latin1');
  return value.split(',').filter(Boolean).map((d) => d.replaceAll('-', '_'));
}

async function runBinary(cmd: string, args: string[]): Promise<Buffer> {
  const { stdout } = await execFileAsync(cmd, args, { encoding: 'buffer', maxBuffer: 64 << 20 });
  return stdout;
}

/** Copies qemu-ga and the shared libraries `ldd` resolves for it to the same paths in the initramfs. */
async function installAgent(unpacked: string, root: string): Promise<void> {
  const qga = path.join(unpacked, 'usr', 'sbin', 'qemu-ga');
  copyFileSync(qga, path.join(root, 'usr', 'sbin', 'qemu-ga'));
  const out = await run('ldd', [qga]);
  const missing = out.split('\n').filter((l) => l.includes('not found'));
  if (missing.length) throw new GuestImageUnavailableError(`qemu-ga needs libraries this machine lacks (install qemu-system-x86 or qemu-guest-agent): ${missing.map((l) => l.trim()).join('; ')}`);
  for (const lib of out.matchAll(/(\/\S+) \(0x/g)) {
    const target = path.join(root, lib[1]);
    mkdirSync(path.dirname(target), { recursive: true });
    copyFileSync(lib[1], target); // follows symlinks: the initramfs gets the real file under the linked name
  }
}

/** qemu-ga's `guest-shutdown` runs /sbin/shutdown; ours asks /init (PID 1) to stop the workload and unmount first. */
const SHUTDOWN_SCRIPT = '#!/bin/busybox sh\nkill -USR1 1\n';

/**
 * The guest's /init. It prints `ferry-guest: ...` lines on the console; tests wait for them.
 * `\${` below is a shell expansion, not a template placeholder.
 */
function initScript(modules: string[]): string {
  const w = WRITER_LAYOUT;
  return `#!/bin/busybox sh
# Ferry's test guest, built by test/src/support/test-vm.ts (recipe ${GUEST_IMAGE_VERSION}).
/bin/busybox mount -t proc proc /proc
/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
say() { echo "ferry-guest: $*"; }

for m in ${modules.join(' ')}; do insmod /modules/$m.ko || say "insmod $m failed"; done

# devtmpfs creates the nodes shortly after the drivers bind: wait (bounded) for them
n=0; while [ ! -b /dev/vda ] && [ $n -lt 100 ]; do usleep 100000; n=$((n + 1)); done
mounted=no
if mount -t ext4 /dev/vda /mnt; then mounted=yes; say "mounted /dev/vda on /mnt"; else say "mount /dev/vda failed"; fi

# no udev, so no /dev/virtio-ports/ names: find the agent's port by its name in sysfs
port=; n=0
while [ -z "$port" ] && [ $n -lt 100 ]; do
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = ${QGA_PORT_NAME} ] && [ -c /dev/\${p##*/} ] && port=/dev/\${p##*/}
  done
  [ -z "$port" ] && usleep 100000; n=$((n + 1))
done
if qemu-ga -m virtio-serial -p "\${port:-/dev/vport1p1}" -d -l /run/qemu-ga.log; then say "agent started on $port"; else say "agent failed"; fi

writer() {
  mkdir -p /mnt/${w.dir}
  i=0
  while [ ! -e /run/ferry-stop ]; do
    i=$((i + 1)); f=$((i % ${w.files})); name=$(printf 'w%02d.dat' $f)
    yes "$(printf 'ferry round %08d file %02d ok' $i $f)" | head -c ${w.fileBytes} > /mnt/${w.dir}/$name.tmp
    mv /mnt/${w.dir}/$name.tmp /mnt/${w.dir}/$name
    sync
    say "writer round $i wrote $name"
    usleep 200000 # pace it: under TCG a busy loop slows the agent's and QEMU's answers
  done
  say "writer stopped after round $i"
}

stop_guest() {
  say "shutdown requested"
  touch /run/ferry-stop
  [ -n "$wpid" ] && wait $wpid
  sync
  umount /mnt && say "unmounted /mnt" || mount -o remount,ro /mnt
  say "power off"
  poweroff -f
}

workload=idle; wpid=
for a in $(cat /proc/cmdline); do case $a in ferry.workload=*) workload=\${a#ferry.workload=} ;; esac; done
# a writer on the initramfs instead of the data disk would pass for a working guest: refuse
[ $mounted = yes ] || { say "no data disk: workload $workload not started"; workload=none; }
trap stop_guest USR1
case $workload in
  writer) writer & wpid=$! ;;
  idle|none) ;;
  *) say "unknown workload $workload" ;;
esac
say "ready workload=$workload"
while :; do sleep 1; done
`;
}

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

// ---------------------------------------------------------------------------------------------
// The data disk

/** Makes an empty ext4 data disk at `file` (raw, or converted to qcow2), for the guest's /mnt. */
export async function makeDataDisk(file: string, sizeMiB: number, format: 'raw' | 'qcow2'): Promise<string> {
  const raw = format === 'raw' ? file : `${file}.raw-tmp`;
  writeFileSync(raw, '');
  truncateSync(raw, sizeMiB * 1024 * 1024);
  // 4 KiB blocks line up with backup blocks; eager inode tables keep the guest's lazyinit thread
  // from writing in the background, so the workload is the only writer
  await run('mkfs.ext4', ['-F', '-q', '-b', '4096', '-E', 'lazy_itable_init=0,lazy_journal_init=0', '-L', 'ferry-data', raw]);
  if (format === 'qcow2') {
    await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, file]);
    rmSync(raw);
  }
  return file;
}

// ---------------------------------------------------------------------------------------------
// JSON over a unix socket (QGA and QMP)

type JsonMessage = Record<string, unknown>;

/** One newline-delimited JSON connection; `next` hands out messages in order, bounded by a deadline. */
class JsonConnection {
  private readonly queue: JsonMessage[] = [];
  private waiter?: { resolve: (m: JsonMessage) => void; reject: (e: Error) => void };
  private buffer = '';
  private failure?: Error;

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => this.receive(chunk));
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  static open(socketPath: string, timeoutMs: number): Promise<JsonConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(socketPath);
      const timer = setTimeout(() => (socket.destroy(), reject(new Error(`connecting to ${socketPath} timed out`))), timeoutMs);
      socket.once('error', (err) => (clearTimeout(timer), reject(err)));
      socket.once('connect', () => (clearTimeout(timer), resolve(new JsonConnection(socket))));
    });
  }

  send(message: JsonMessage | Buffer): void {
    this.socket.write(Buffer.isBuffer(message) ? message : JSON.stringify(message) + '\n');
  }

  next(timeoutMs: number, what: string): Promise<JsonMessage> {
    const ready = this.queue.shift();
    if (ready) return Promise.resolve(ready);
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => ((this.waiter = undefined), reject(new Error(`${what}: no answer within ${timeoutMs} ms`))), timeoutMs);
      const settle = <T>(fn: (v: T) => void) => (v: T): void => (clearTimeout(timer), (this.waiter = undefined), fn(v));
      this.waiter = { resolve: settle(resolve), reject: settle(reject) };
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private receive(chunk: string): void {
    this.buffer += chunk;
    let nl: number;
    while ((nl = this.buffer.indexOf('\n')) >= 0) {
      const line = this.buffer.slice(0, nl).trim();
      this.buffer = this.buffer.slice(nl + 1);
      let message: JsonMessage;
      try {
        message = JSON.parse(line) as JsonMessage;
      } catch {
        continue; // the agent's reply to our 0xFF parser reset, or noise
      }
      if (this.waiter) this.waiter.resolve(message);
      else this.queue.push(message);
    }
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.waiter?.reject(err);
  }
}

/** An error the agent or QMP answered with; `errorClass` is QEMU's class, e.g. `GenericError`. */
export class QemuCommandError extends Error {
  override readonly name = 'QemuCommandError';
  constructor(readonly command: string, readonly errorClass: string, desc: string) {
    super(`${command}: ${errorClass}: ${desc}`);
  }
}

function unwrap<T>(command: string, reply: JsonMessage): T {
  if ('error' in reply) {
    const e = reply.error as { class?: string; desc?: string };
    throw new QemuCommandError(command, e.class ?? 'Error', e.desc ?? JSON.stringify(reply.error));
  }
  return reply.return as T;
}

export interface AgentCallOptions {
  /** Bound on the whole exchange (sync and command); default 10 s. */
  timeoutMs?: number;
  /** For commands the agent never answers on success (`guest-shutdown`, `guest-suspend-*`). */
  noReply?: boolean;
}

/**
 * A minimal QEMU guest agent client. QGA has no greeting and may hold stale replies (of a timed-out
 * call, or queued while the guest was booting), so every call first sends a 0xFF byte (resets the
 * agent's JSON parser) and `guest-sync` with a fresh id, and drops everything up to that id's echo.
 * Calls are serialized over one connection, which is reopened after any failure.
 */
export class GuestAgentClient {
  private conn?: JsonConnection;
  private chain: Promise<unknown> = Promise.resolve();
  private nextId = Math.floor(Math.random() * 1_000_000_000);

  constructor(readonly socketPath: string) {}

  execute<T = unknown>(command: string, args?: JsonMessage, opts: AgentCallOptions = {}): Promise<T> {
    const call = this.chain.then(() => this.exchange<T>(command, args, opts));
    this.chain = call.catch(() => undefined);
    return call;
  }

  close(): void {
    this.conn?.close();
    this.conn = undefined;
  }

  private async exchange<T>(command: string, args: JsonMessage | undefined, opts: AgentCallOptions): Promise<T> {
    const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
    const left = (): number => Math.max(1, deadline - Date.now());
    try {
      this.conn ??= await JsonConnection.open(this.socketPath, left());
      const id = this.nextId++;
      this.conn.send(Buffer.from([0xff]));
      this.conn.send({ execute: 'guest-sync', arguments: { id } });
      // skip stale replies until our sync id comes back
      while ((await this.conn.next(left(), `${command} (guest-sync)`)).return !== id) continue;
      this.conn.send(args ? { execute: command, arguments: args } : { execute: command });
      if (opts.noReply) return undefined as T;
      return unwrap<T>(command, await this.conn.next(left(), command));
    } catch (err) {
      if (!(err instanceof QemuCommandError)) this.close();
      throw err;
    }
  }
}

/** Runs one QMP command on a fresh connection (greeting, `qmp_capabilities`, command), skipping events. */
export async function qmpCommand<T = unknown>(socketPath: string, command: string, args?: JsonMessage, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const conn = await JsonConnection.open(socketPath, left());
  const reply = async (what: string): Promise<JsonMessage> => {
    for (;;) {
      const m = await conn.next(left(), what);
      if (!('event' in m)) return m;
    }
  };
  try {
    await conn.next(left(), 'QMP greeting');
    conn.send({ execute: 'qmp_capabilities' });
    unwrap(command, await reply('qmp_capabilities'));
    conn.send(args ? { execute: command, arguments: args } : { execute: command });
    return unwrap<T>(command, await reply(command));
  } finally {
    conn.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The VM

export interface VmOptions {
  /** A folder for the sockets and console log (unix socket paths must stay under 108 bytes). */
  dir: string;
  disk: string;
  format: 'raw' | 'qcow2';
  workload?: Workload;
  /** Default 256. */
  memoryMiB?: number;
  /** Bound on boot until the agent answers `guest-ping`; default 60 s. */
  bootTimeoutMs?: number;
  cacheDir?: string;
}

export interface TestVm {
  readonly qmpSocket: string;
  readonly qgaSocket: string;
  readonly consoleLogPath: string;
  /** QEMU's pid (also after it exited). */
  readonly pid: number;
  /** The serial console so far (kernel and `ferry-guest:` lines). */
  consoleLog(): string;
  agent<T = unknown>(command: string, args?: Record<string, unknown>, opts?: AgentCallOptions): Promise<T>;
  qmp<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T>;
  /** Resolves once the console matches `until`; rejects after `timeoutMs` or when QEMU exits. */
  waitForConsole(until: RegExp | ((log: string) => boolean), timeoutMs: number): Promise<void>;
  /**
   * Stops QEMU; idempotent. `graceful` (default): thaw, ask the guest to stop the workload, unmount
   * and power off (bounded), then kill. `graceful: false`: SIGKILL at once, like a host crash.
   */
  stop(opts?: { graceful?: boolean }): Promise<void>;
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

/** A last resort for failed or interrupted tests: 'exit' handlers run synchronously, and kill() is. */
function trackForExit(child: ChildProcess): void {
  running.add(child);
  child.once('exit', () => running.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const c of running) c.kill('SIGKILL');
  });
}

function qemuArgs(image: GuestImage, opts: VmOptions, sockets: { qmp: string; qga: string }): string[] {
  const esc = (s: string): string => s.replaceAll(',', ',,'); // QEMU option values escape commas by doubling
  return [
    '-accel', 'tcg', // never KVM: nested KVM hangs at "Booting from ROM" on these machines
    '-m', String(opts.memoryMiB ?? 256),
    '-nographic', '-no-reboot',
    '-nic', 'none', // no NIC: the guest needs no network, and boot skips the NIC's iPXE ROM
    '-kernel', image.kernel, '-initrd', image.initrd,
    '-append', `console=ttyS0 quiet panic=-1 ferry.workload=${opts.workload ?? 'idle'}`,
    '-drive', `file=${esc(opts.disk)},if=none,id=d0,node-name=disk0,format=${opts.format}`,
    '-device', 'virtio-blk-pci,drive=d0',
    '-device', 'virtio-serial',
    '-chardev', `socket,path=${esc(sockets.qga)},server=on,wait=off,id=qga0`,
    '-device', `virtserialport,chardev=qga0,name=${QGA_PORT_NAME}`,
    '-qmp', `unix:${esc(sockets.qmp)},server=on,wait=off`,
  ];
}

/** Boots the guest and resolves once its agent answers `guest-ping`; on any failure QEMU is already stopped. */
export async function startVm(opts: VmOptions): Promise<TestVm> {
  const image = await ensureGuestImage(opts.cacheDir);
  mkdirSync(opts.dir, { recursive: true });
  const sockets = { qmp: path.join(opts.dir, 'qmp.sock'), qga: path.join(opts.dir, 'qga.sock') };
  if (Buffer.byteLength(sockets.qmp) > 107) throw new Error(`socket path too long for a unix socket: ${sockets.qmp}`);
  for (const s of Object.values(sockets)) rmSync(s, { force: true });
  const logPath = path.join(opts.dir, 'console.log');
  const log = openSync(logPath, 'w');
  const qemu = findTool('qemu-system-x86_64') ?? 'qemu-system-x86_64';
  const setpriv = findTool('setpriv');
  // setpriv sets PR_SET_PDEATHSIG and execs QEMU: the kernel kills QEMU even if node is SIGKILLed
  const [cmd, args] = setpriv ? [setpriv, ['--pdeathsig', 'KILL', '--', qemu, ...qemuArgs(image, opts, sockets)]] : [qemu, qemuArgs(image, opts, sockets)];
  const child = spawn(cmd, args, { stdio: ['ignore', log, log] });
  closeSync(log);
  trackForExit(child);
  const vm = new RunningVm(child, sockets, logPath);
  try {
    await vm.waitForAgent(opts.bootTimeoutMs ?? 60_000);
    return vm;
  } catch (err) {
    await vm.stop({ graceful: false });
    throw err;
  }
}

class RunningVm implements TestVm {
  readonly qmpSocket: string;
  readonly qgaSocket: string;
  readonly pid: number;
  private readonly client: GuestAgentClient;
  private readonly exited: Promise<void>;
  private stopping?: Promise<void>;
  private spawnError?: Error;

  constructor(private readonly child: ChildProcess, sockets: { qmp: string; qga: string }, readonly consoleLogPath: string) {
    this.qmpSocket = sockets.qmp;
    this.qgaSocket = sockets.qga;
    this.pid = child.pid ?? -1;
    this.client = new GuestAgentClient(sockets.qga);
    this.exited = new Promise((resolve) => {
      child.once('exit', () => resolve());
      // a failed spawn emits 'error' and never 'exit'
      child.once('error', (err) => ((this.spawnError = err), resolve()));
    });
  }

  get hasExited(): boolean {
    return this.spawnError !== undefined || this.child.exitCode !== null || this.child.signalCode !== null;
  }

  consoleLog(): string {
    return existsSync(this.consoleLogPath) ? readFileSync(this.consoleLogPath, 'utf8') : '';
  }

  agent<T = unknown>(command: string, args?: Record<string, unknown>, opts?: AgentCallOptions): Promise<T> {
    return this.client.execute<T>(command, args, opts);
  }

  qmp<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    return qmpCommand<T>(this.qmpSocket, command, args);
  }

  async waitForAgent(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      if (this.hasExited) throw new Error(`QEMU exited during boot (${this.spawnError?.message ?? this.child.exitCode ?? this.child.signalCode}):\n${this.tail()}`);
      try {
        // short attempts: until qemu-ga opens its port QEMU leaves what we write unread, and each
        // timed-out attempt drops its connection, so no backlog of pings builds up
        await this.client.execute('guest-ping', undefined, { timeoutMs: Math.min(2_000, Math.max(1, deadline - Date.now())) });
        return;
      } catch (err) {
        last = err;
        await sleep(250);
      }
    }
    throw new Error(`the guest agent did not answer within ${timeoutMs} ms (${(last as Error)?.message}):\n${this.tail()}`);
  }

  async waitForConsole(until: RegExp | ((log: string) => boolean), timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const done = typeof until === 'function' ? until : (log: string): boolean => until.test(log);
    while (!done(this.consoleLog())) {
      if (this.hasExited) throw new Error(`QEMU exited before the console showed ${until}:\n${this.tail()}`);
      if (Date.now() > deadline) throw new Error(`the console did not show ${until} within ${timeoutMs} ms:\n${this.tail()}`);
      await sleep(200);
    }
  }

  stop(opts: { graceful?: boolean } = {}): Promise<void> {
    this.stopping ??= this.shutdown(opts.graceful ?? true);
    return this.stopping;
  }

  private async shutdown(graceful: boolean): Promise<void> {
    if (graceful && !this.hasExited) {
      try {
        // a frozen guest refuses guest-shutdown, and could not unmount
        await this.client.execute('guest-fsfreeze-thaw', undefined, { timeoutMs: 5_000 });
        await this.client.execute('guest-shutdown', undefined, { timeoutMs: 5_000, noReply: true });
        await within(this.exited, 20_000);
      } catch {
        // the agent is gone or stuck: fall through to the kill
      }
    }
    if (!this.hasExited) this.child.kill('SIGKILL');
    await this.exited;
    this.client.close();
  }

  private tail(lines = 40): string {
    return this.consoleLog().split('\n').slice(-lines).join('\n');
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves when `p` settles or after `ms`, whichever is first, leaving no timer behind. */
async function within(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([p, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}
