import { FerryError, type GuestOptions } from '@ferry/core/plugin';
import type { ExecOptions, ExecResult } from '@ferry/guest-common';

/**
 * How every command reaches a Windows guest over OpenSSH: one `powershell.exe` per command with
 * the script as `-EncodedCommand` (base64 of its UTF-16LE text, as `powershell.exe -Help`
 * documents). Win32-OpenSSH hands the command line to the default shell (cmd.exe unless the
 * `DefaultShell` registry value names PowerShell); this form means the same to both, needs no
 * quoting, and stays far below cmd.exe's 8191-character limit because bulk data (a file being
 * copied in) travels on standard input, never on the command line.
 */
export const POWERSHELL = 'powershell.exe -NoLogo -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand';

/** The command line that runs `script` in the guest. */
export function encodedCommand(script: string): string {
  return `${POWERSHELL} ${Buffer.from(script, 'utf16le').toString('base64')}`;
}

/** The script back from an encoded command line (the simulator's side of `encodedCommand`). */
export function decodeCommand(line: string): string | undefined {
  const m = /-EncodedCommand\s+([A-Za-z0-9+/=]+)\s*$/.exec(line);
  return m ? Buffer.from(m[1], 'base64').toString('utf16le') : undefined;
}

/** A PowerShell single-quoted string literal (`'` doubled, nothing else is special inside). */
export function psQuote(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}

/** A channel that runs a command line as the guest's shell gets it (`SshChannel`, `QgaLineChannel`). */
export interface LineChannel {
  /** `ssh Administrator@db1:22` or `qga unix:/path`. */
  readonly label: string;
  execLine(line: string, opts?: ExecOptions): Promise<ExecResult>;
  close(): Promise<void>;
}

/** Runs PowerShell scripts in the guest through a command channel (SSH, or the agent's guest-exec). */
export class PowerShell {
  constructor(
    readonly channel: LineChannel,
    /** Where errors say the command ran, e.g. `ssh Administrator@db1:22`. */
    readonly label: string,
  ) {}

  /**
   * Runs `script`; stdin, when given, is what `[Console]::In.ReadToEnd()` reads in it. Output is
   * the last 4 KiB unless `maxOutput` says more (listings that are parsed: `LISTING_BYTES`).
   */
  run(script: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.channel.execLine(encodedCommand(script), opts);
  }

  /** Runs `script` and throws `GUEST_STEP_FAILED` naming `what` when it exits non-zero. */
  async check(what: string, script: string, opts: ExecOptions = {}): Promise<string> {
    const r = await this.run(script, opts);
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `${what} failed in the guest (exit ${r.exitCode ?? 'none'}): ${tail(r.output)}`);
    return r.output;
  }

  /** Writes `data` to the guest file `path` (through standard input, as base64). */
  async writeFile(path: string, data: Buffer): Promise<void> {
    await this.check(`writing ${path}`, `$b = [Console]::In.ReadToEnd(); [IO.File]::WriteAllBytes(${psQuote(path)}, [Convert]::FromBase64String($b.Trim()))`, {
      stdin: data.toString('base64'),
    });
  }
}

/** Output kept of a command whose listing is parsed (writers, layout, extents, DiskShadow's log): all of it, in practice. */
export const LISTING_BYTES = 4 * 1024 * 1024;

/** The last 400 characters of a command's output, for error messages. */
export function tail(output: string): string {
  const t = output.trim();
  return t.length > 400 ? `...${t.slice(-400)}` : t || '(no output)';
}

/** The bound of one command in the guest: a little under the step's, so the runtime stops it itself. */
export function commandLimit(o: GuestOptions): number {
  return Math.max(1, o.timeoutSeconds - 1);
}
