/**
 * The test guest's image: a kernel + busybox/qemu-ga initramfs built from Debian's packages (recipe:
 * shared/TESTVM.md, summary in test/README.md), built once and cached.
 */
import { execFile } from 'node:child_process';
import { accessSync, constants, copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { WRITER_LAYOUT } from './guest-writer.js';
import { ROOT } from './helpers.js';

/** The cache key of the guest image: bump it whenever the recipe below changes, so caches rebuild. */
export const GUEST_IMAGE_VERSION = 'ferry-guest-2';

/** Where built guest images live (`.cache/` is gitignored); `FERRY_TEST_VM_CACHE` moves it, e.g. for CI. */
export const GUEST_CACHE_DIR: string = process.env.FERRY_TEST_VM_CACHE ?? path.join(ROOT, '.cache', 'test-vm');


/**
 * The virtio modules the guest needs (ext4, jbd2, crc32c are built into Debian's cloud kernel). The
 * load order comes from the modules' own `depends=`: virtio needs virtio_ring, so TESTVM.md's list
 * order fails with "unknown symbol".
 */
const MODULES = ['virtio', 'virtio_ring', 'virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk', 'virtio_console'];
/** The virtio-serial port name the guest agent listens on (the VM wires its chardev to it). */
export const QGA_PORT_NAME = 'org.qemu.guest_agent.0';
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
  /** The missing tools, each with its Debian package (absent when the platform is the reason). */
  missing?: Record<string, string>;
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
  return { available: false, reason: `missing ${missing.map(([tool, pkg]) => `${tool} (Debian package ${pkg})`).join(', ')}`, missing: Object.fromEntries(missing) };
}

/** Runs a tool to completion; the error names the command and carries its stderr. */
export async function run(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<string> {
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
# Ferry's test guest, built by test/src/support/guest-image.ts (recipe ${GUEST_IMAGE_VERSION}).
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
