import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** The tools the specs use, with the Debian package that ships each (`skipUnlessTools(this, TOOLS)`). */
export const TOOLS: Record<string, string> = {
  'qemu-storage-daemon': 'qemu-system-common',
  'qemu-img': 'qemu-utils',
  'qemu-io': 'qemu-utils',
  nbdcopy: 'libnbd-bin',
  nbdinfo: 'libnbd-bin',
};

export interface DaemonOptions {
  /** qcow2 disks to create (node names), each `sizeBytes` large. Default one 4 MiB `disk0`. */
  disks?: string[];
  sizeBytes?: number;
  /** Start QEMU's NBD server at `nbdPath` with a writable export `<node>` of each disk (the "guest"). */
  writableExports?: boolean;
  /** Reuse this folder and its images (a restart after a crash) instead of a new temp folder. */
  dir?: string;
  /** VM name used for the default NBD socket name. Default `vm1`. */
  vm?: string;
}

/**
 * A qemu-storage-daemon of its own for one spec: qcow2 images in a temp folder, a QMP monitor on a
 * unix socket there and, when asked, an NBD server with writable exports that play the guest
 * writing to its disks (the daemon holds the images, so they cannot be written any other way).
 */
export class StorageDaemon {
  private exited: Promise<void>;

  private constructor(
    readonly dir: string,
    readonly disks: string[],
    readonly vm: string,
    private readonly proc: ChildProcess,
  ) {
    this.exited = new Promise((resolve) => proc.once('exit', () => resolve()));
  }

  get qmpPath(): string {
    return path.join(this.dir, 'qmp.sock');
  }
  get qmp(): string {
    return `unix:${this.qmpPath}`;
  }
  /** The default NBD address this host uses for VM `vm` (beside the QMP socket). */
  get nbdPath(): string {
    return path.join(this.dir, `${this.vm}.ferry-nbd.sock`);
  }
  image(node: string): string {
    return path.join(this.dir, `${node}.qcow2`);
  }

  static async start(opts: DaemonOptions = {}): Promise<StorageDaemon> {
    const dir = opts.dir ?? mkdtempSync(path.join(os.tmpdir(), 'ferry-qsd-'));
    const disks = opts.disks ?? ['disk0'];
    const vm = opts.vm ?? 'vm1';
    // A restarted daemon must not be taken as up because of the sockets its predecessor left.
    for (const sock of ['qmp.sock', `${vm}.ferry-nbd.sock`]) rmSync(path.join(dir, sock), { force: true });
    for (const d of disks) {
      const img = path.join(dir, `${d}.qcow2`);
      if (!existsSync(img)) await run('qemu-img', ['create', '-q', '-f', 'qcow2', img, String(opts.sizeBytes ?? 4 * 1024 * 1024)]);
    }
    const args = disks.flatMap((d) => [
      '--blockdev', `driver=file,node-name=${d}-file,filename=${path.join(dir, `${d}.qcow2`)}`,
      '--blockdev', `driver=qcow2,node-name=${d},file=${d}-file`,
    ]);
    args.push('--chardev', `socket,path=${path.join(dir, 'qmp.sock')},server=on,wait=off,id=qmp0`, '--monitor', 'chardev=qmp0');
    if (opts.writableExports) {
      args.push('--nbd-server', `addr.type=unix,addr.path=${path.join(dir, `${vm}.ferry-nbd.sock`)}`);
      for (const d of disks) args.push('--export', `type=nbd,id=${d}-guest,node-name=${d},name=${d},writable=on`);
    }
    const logFd = openSync(path.join(dir, 'qsd.log'), 'a');
    const proc = spawn('qemu-storage-daemon', args, { stdio: ['ignore', logFd, logFd] });
    closeSync(logFd);
    const daemon = new StorageDaemon(dir, disks, vm, proc);
    await daemon.waitForSocket();
    return daemon;
  }

  /** Waits until the sockets accept connections: a socket file exists from bind(), before listen(). */
  private async waitForSocket(): Promise<void> {
    const deadline = Date.now() + 5000;
    while (!(await accepts(this.qmpPath)) || (this.nbdWanted() && !(await accepts(this.nbdPath)))) {
      if (this.proc.exitCode !== null) throw new Error(`qemu-storage-daemon exited early; see ${this.dir}/qsd.log`);
      if (Date.now() > deadline) throw new Error(`qemu-storage-daemon did not open its sockets within 5 s; see ${this.dir}/qsd.log`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private nbdWanted(): boolean {
    return this.proc.spawnargs.includes('--nbd-server');
  }

  /** The guest writes `length` bytes of `pattern` at `offset` of disk `node`. */
  async write(node: string, offset: number, length: number, pattern: number): Promise<void> {
    await run('qemu-io', ['-f', 'raw', '-c', `write -P ${pattern} ${offset} ${length}`, nbdUri(this.nbdPath, node)]);
  }

  /** Stops the daemon as a crash would (no bitmaps saved), keeping the folder for a restart. */
  async kill(): Promise<void> {
    this.proc.kill('SIGKILL');
    await this.exited;
  }

  /** Stops the daemon cleanly (it saves persistent bitmaps into the images), keeping the folder. */
  async shutdown(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.kill('SIGTERM');
    const t = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    await this.exited;
    clearTimeout(t);
  }

  /** Stops the daemon (bounded) and removes its folder; says so when the daemon had died by itself. */
  async stop(): Promise<void> {
    if (this.proc.exitCode !== null || (this.proc.signalCode !== null && this.proc.signalCode !== 'SIGKILL')) {
      const log = readFileSync(path.join(this.dir, 'qsd.log'), 'utf8').slice(-2000);
      console.log(`      qemu-storage-daemon had exited by itself (${this.proc.exitCode ?? this.proc.signalCode}):\n${log}`);
    }
    await this.shutdown();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function accepts(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ path: socket });
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

export function nbdUri(socket: string, exportName: string): string {
  return `nbd+unix:///${exportName}?socket=${socket}`;
}

/** Reads a whole export with nbdcopy. */
export async function readExport(uri: string): Promise<Buffer> {
  const { stdout } = await run('nbdcopy', [uri, '-'], { encoding: 'buffer', maxBuffer: 256 * 1024 * 1024 });
  return stdout;
}

/**
 * The guest content of a qcow2 image file (with its backing chain) as `qemu-img convert` reads it:
 * the oracle for what hot-add would read. `-U` because the daemon still holds the image (read-only).
 */
export async function readImage(file: string): Promise<Buffer> {
  const out = path.join(path.dirname(file), `oracle-${process.pid}-${Date.now()}.raw`);
  try {
    await run('qemu-img', ['convert', '-U', '-f', 'qcow2', '-O', 'raw', file, out]);
    return readFileSync(out);
  } finally {
    rmSync(out, { force: true });
  }
}

/** The dirty extents of `qemu:dirty-bitmap:<bitmap>` on an export, as nbdinfo reports them. */
export async function dirtyExtents(uri: string, bitmap: string): Promise<{ offset: number; length: number }[]> {
  const { stdout } = await run('nbdinfo', ['--json', `--map=qemu:dirty-bitmap:${bitmap}`, uri]);
  const map = JSON.parse(stdout) as { offset: number; length: number; type: number }[];
  return map.filter((e) => e.type & 1).map((e) => ({ offset: e.offset, length: e.length }));
}

/** Exports an NBD server lists (nbdinfo --list). */
export async function listExports(socket: string): Promise<string[]> {
  const { stdout } = await run('nbdinfo', ['--list', '--json', `nbd+unix://?socket=${socket}`]);
  return (JSON.parse(stdout) as { exports: { 'export-name': string }[] }).exports.map((e) => e['export-name']);
}
