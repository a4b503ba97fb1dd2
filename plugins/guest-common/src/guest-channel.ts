/** What a command run in the guest gave back. Output is bounded: only its last bytes are kept. */
export interface ExecResult {
  exitCode: number | null;
  /** Standard output and error, interleaved as they came, at most `MAX_OUTPUT` bytes (the last ones). */
  output: string;
}

/** A command kept running in the guest (a database session holding a lock) until `end`. */
export interface HeldCommand {
  /** Writes to its standard input. */
  write(text: string): void;
  /** Resolves when its output (so far) contains `marker`; rejects when it exits first. */
  waitFor(marker: string, signal?: AbortSignal): Promise<void>;
  /** Closes its input and waits for it to exit (killed after `graceMs`). */
  end(graceMs: number): Promise<ExecResult>;
}

/** At most this much of a command's output is kept (the last bytes, where errors usually are). */
export const MAX_OUTPUT = 4096;

export interface ExecOptions {
  stdin?: string;
  signal?: AbortSignal;
  /** Output bytes kept (the last ones); default `MAX_OUTPUT`. The runtime's own listings need more. */
  maxOutput?: number;
}

/**
 * How the runtime reaches a Linux guest: an SSH connection (`ssh-channel.ts`) or the QEMU guest
 * agent (`qga-channel.ts`). Commands are argument vectors run without a shell in between (the agent
 * has none), so the runtime script does the shell work inside the guest.
 */
export interface GuestChannel {
  /** `ssh root@host:22` or `qga unix:/path`. */
  readonly label: string;
  exec(argv: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Runs `argv` and keeps it running; not every channel can (`undefined`: it cannot). */
  hold?(argv: string[]): Promise<HeldCommand>;
  writeFile(path: string, data: Buffer, mode: number): Promise<void>;
  close(): Promise<void>;
}

/** Keeps the last `MAX_OUTPUT` bytes of a stream of chunks. */
export class OutputTail {
  private chunks: Buffer[] = [];
  private bytes = 0;

  constructor(private readonly max = MAX_OUTPUT) {}

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bytes += chunk.length;
    while (this.bytes - this.chunks[0].length >= this.max) this.bytes -= this.chunks.shift()!.length;
  }

  text(): string {
    const all = Buffer.concat(this.chunks);
    return all.subarray(Math.max(0, all.length - this.max)).toString('utf8');
  }
}

/** `argv` as one POSIX shell command line (SSH carries a string), each word single-quoted. */
export function shellLine(argv: string[]): string {
  return argv.map((a) => (/^[A-Za-z0-9_./=:,@+-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`)).join(' ');
}
