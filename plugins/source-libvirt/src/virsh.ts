import { execFile, type ExecFileException } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError, type ErrorLocation } from '@ferry/core/plugin';

/** What one virsh call may print before it is cut off: a domain XML is tens of KiB. */
export const VIRSH_MAX_OUTPUT = 16 * 1024 * 1024;
/** A virsh call that takes longer is killed: libvirt answers in milliseconds unless it hangs. */
export const VIRSH_TIMEOUT_MS = 60_000;

export interface VirshResult {
  ok: boolean;
  stdout: string;
  stderr: string;
}

export interface VirshCall {
  /** The domain the call is about, for errors. */
  domain?: string;
  timeoutMs?: number;
}

/**
 * libvirt through its own command-line client: `virsh -c URI ...`, one process per call, no shell,
 * output bounded, a time limit per call. Every failure is a FerryError naming the command and the
 * domain; `SOURCE_UNREACHABLE` when virsh is missing or cannot connect.
 */
export class Virsh {
  constructor(
    readonly uri: string,
    private readonly where: ErrorLocation = {},
    private readonly binary = 'virsh',
  ) {}

  /** Runs a command that must succeed; returns its stdout. */
  async run(args: string[], call: VirshCall = {}): Promise<string> {
    const r = await this.tryRun(args, call);
    if (r.ok) return r.stdout;
    throw new FerryError('SOURCE_COMMAND_FAILED', `${this.describe(args, call)} failed: ${firstLines(r.stderr)}`, this.context(call));
  }

  /**
   * Runs a command whose failure the caller interprets (a backup job that may not exist). Still
   * throws when virsh cannot run at all, cannot reach libvirt, or runs out of time or output room.
   */
  async tryRun(args: string[], call: VirshCall = {}): Promise<VirshResult> {
    const timeout = call.timeoutMs ?? VIRSH_TIMEOUT_MS;
    const r = await new Promise<VirshResult & { err?: ExecFileException }>((resolve) => {
      execFile(
        this.binary,
        ['-q', '-c', this.uri, ...args],
        { timeout, killSignal: 'SIGKILL', maxBuffer: VIRSH_MAX_OUTPUT, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } },
        (err, stdout, stderr) => resolve({ ok: !err, stdout: String(stdout), stderr: String(stderr), ...(err && { err }) }),
      );
    });
    const err = r.err;
    if (!err) return r;
    if (err.code === 'ENOENT') {
      throw new FerryError('SOURCE_UNREACHABLE', `${this.binary} is not installed (Debian package libvirt-clients); it is how Ferry talks to libvirt at ${this.uri}`, this.context(call, true));
    }
    if (err.code === 'ERR_CHILD_PROCESS_STDIO_MAXBUFFER') {
      throw new FerryError('SOURCE_COMMAND_FAILED', `${this.describe(args, call)} printed more than ${VIRSH_MAX_OUTPUT} bytes`, this.context(call));
    }
    if (err.killed || err.signal === 'SIGKILL') {
      throw new FerryError('SOURCE_COMMAND_FAILED', `${this.describe(args, call)} did not finish within ${timeout / 1000} s`, this.context(call));
    }
    if (r.stderr.toLowerCase().includes('failed to connect to the hypervisor')) {
      throw new FerryError('SOURCE_UNREACHABLE', `libvirt at ${this.uri} cannot be reached: ${firstLines(r.stderr)}`, this.context(call, true));
    }
    return { ok: false, stdout: r.stdout, stderr: r.stderr };
  }

  /**
   * Runs a command that takes an XML document as a file (`backup-begin`, `checkpoint-create`,
   * `define`): the XML goes into a private temporary file, removed afterwards. `place` gets the
   * file's path and returns the arguments.
   */
  async runWithXml(xml: string[], place: (files: string[]) => string[], call: VirshCall = {}): Promise<VirshResult> {
    const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-virsh-'));
    try {
      const files = await Promise.all(
        xml.map(async (text, i) => {
          const f = path.join(dir, `${i}.xml`);
          await fs.writeFile(f, text, { mode: 0o600 });
          return f;
        }),
      );
      return await this.tryRun(place(files), call);
    } finally {
      await fs.rm(dir, { recursive: true, force: true });
    }
  }

  describe(args: string[], call: VirshCall = {}): string {
    return `virsh ${args.join(' ')}${call.domain ? ` (domain ${call.domain})` : ''}`;
  }

  /** Where an error happened: the host and domain (the job file's `uri` line only for an unreachable host). */
  context(call: VirshCall = {}, atUri = false): ErrorLocation {
    return { ...(atUri && this.where), host: this.uri, ...(call.domain && { vm: call.domain }) };
  }
}

/** The message of a failed call: libvirt's `error:` lines, at most a few hundred characters. */
export function firstLines(stderr: string): string {
  const text = stderr
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean)
    .join('; ');
  return (text || 'no message').slice(0, 600);
}

/** `Key: value` lines of `domblkinfo`, `dominfo`: the value of one key, or undefined. */
export function keyValue(text: string, key: string): string | undefined {
  for (const line of text.split('\n')) {
    const at = line.indexOf(':');
    if (at > 0 && line.slice(0, at).trim() === key) return line.slice(at + 1).trim();
  }
  return undefined;
}

/** Non-empty lines: `--name` listings. */
export function lines(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter(Boolean);
}
