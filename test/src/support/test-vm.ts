/**
 * A real Linux guest under QEMU TCG for tests, built from Debian's packages (recipe:
 * shared/TESTVM.md, summary in test/README.md).
 *
 * - `ensureGuestImage` (guest-image.ts) builds a kernel + busybox/qemu-ga initramfs once and caches it.
 * - The writer workload's files and checks are in guest-writer.ts; the agent and QMP clients in qemu-json.ts.
 * - `makeDataDisk` makes the ext4 data disk the guest mounts on /mnt.
 * - `startVm` boots the guest with a workload and returns once its guest agent answers.
 *
 * Every QEMU started here dies with the test process: `stop()`, a process-exit hook, and (where
 * `setpriv` exists) the kernel's parent-death signal, so a crashed mocha leaves no guest behind.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ensureGuestImage, findTool, QGA_PORT_NAME, run, type GuestImage } from './guest-image.js';
import type { Workload } from './guest-writer.js';
import { GuestAgentClient, qmpCommand, type AgentCallOptions } from './qemu-json.js';

export * from './guest-image.js';
export * from './guest-writer.js';
export * from './qemu-json.js';

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
  /** Lets go of the agent socket (it serves one client at a time) so another client, e.g. Ferry's guest runtime, can use it; the next `agent` call reconnects. */
  releaseAgent(): void;
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

  releaseAgent(): void {
    this.client.close();
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
