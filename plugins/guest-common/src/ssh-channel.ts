import { FerryError } from '@ferry/core/plugin';
import { Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import { OutputTail, shellLine, type ExecOptions, type ExecResult, type GuestChannel, type HeldCommand } from './guest-channel.js';
import { checkHostKey, hostKeyAlgorithms } from './known-hosts.js';

export interface SshTarget {
  host: string;
  port: number;
  user: string;
  privateKey?: Buffer;
  password?: string;
  knownHosts: string;
  timeoutMs: number;
}

/**
 * A guest reached over SSH (the `ssh2` package). The host key is checked against the job's
 * known_hosts before any credential is sent: an unknown or different key refuses the connection
 * with `GUEST_HOST_KEY`. One connection carries every command of the session.
 */
export class SshChannel implements GuestChannel {
  readonly label: string;
  private closing?: Promise<void>;

  private constructor(
    private readonly client: Client,
    t: SshTarget,
  ) {
    this.label = `ssh ${t.user}@${t.host}:${t.port}`;
  }

  static connect(t: SshTarget, signal?: AbortSignal): Promise<SshChannel> {
    const client = new Client();
    const where = { host: `${t.host}:${t.port}` };
    let keyProblem: string | undefined;
    return new Promise<SshChannel>((resolve, reject) => {
      const fail = (err: FerryError): void => {
        client.end();
        reject(err);
      };
      const onAbort = (): void => fail(new FerryError('GUEST_UNREACHABLE', `connecting to ${t.host}:${t.port} was given up`, where));
      signal?.addEventListener('abort', onAbort, { once: true });
      client.on('ready', () => {
        signal?.removeEventListener('abort', onAbort);
        resolve(new SshChannel(client, t));
      });
      client.on('error', (err: Error & { level?: string }) => {
        signal?.removeEventListener('abort', onAbort);
        if (keyProblem) fail(new FerryError('GUEST_HOST_KEY', keyProblem, where));
        else if (err.level === 'client-authentication') fail(new FerryError('GUEST_UNREACHABLE', `${t.host}:${t.port} refused the credentials of user ${t.user}`, where));
        else fail(new FerryError('GUEST_UNREACHABLE', `cannot reach ${t.host}:${t.port} over SSH: ${err.message}`, where));
      });
      const algorithms = hostKeyAlgorithms(t.knownHosts, t.host, t.port);
      const config: ConnectConfig = {
        ...(algorithms && { algorithms: { serverHostKey: algorithms as NonNullable<ConnectConfig['algorithms']>['serverHostKey'] } }),
        host: t.host,
        port: t.port,
        username: t.user,
        readyTimeout: t.timeoutMs,
        ...(t.privateKey && { privateKey: t.privateKey }),
        ...(t.password !== undefined && { password: t.password }),
        hostVerifier: (key: Buffer) => {
          const verdict = checkHostKey(t.knownHosts, t.host, t.port, key);
          if (verdict === 'ok') return true;
          keyProblem =
            verdict === 'unknown'
              ? `the knownHosts file has no key for ${t.host}:${t.port}; refusing to connect (add the guest's host key with ssh-keyscan, after checking it)`
              : verdict === 'revoked'
                ? `the host key of ${t.host}:${t.port} is marked @revoked in the knownHosts file`
                : `the host key of ${t.host}:${t.port} differs from the one in the knownHosts file (the guest was reinstalled, or someone is in between): refusing to connect`;
          return false;
        },
      };
      client.connect(config);
    });
  }

  exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    return this.execLine(shellLine(argv), opts);
  }

  /**
   * Runs one command line as the guest's shell receives it (no POSIX quoting: a Windows guest's
   * cmd.exe or PowerShell reads it), with the same output capture and abort as `exec`.
   */
  execLine(line: string, opts: ExecOptions = {}): Promise<ExecResult> {
    return this.openLine(line).then(
      (ch) =>
        new Promise<ExecResult>((resolve) => {
          const tail = new OutputTail(opts.maxOutput);
          let exitCode: number | null = null;
          ch.on('data', (d: Buffer) => tail.push(d));
          ch.stderr.on('data', (d: Buffer) => tail.push(d));
          ch.on('exit', (code: number | null) => (exitCode = code));
          const onAbort = (): void => {
            // ends the channel; the runtime script's own timeout kills what it started
            kill(ch);
          };
          opts.signal?.addEventListener('abort', onAbort, { once: true });
          ch.on('close', () => {
            opts.signal?.removeEventListener('abort', onAbort);
            resolve({ exitCode, output: tail.text() });
          });
          if (opts.stdin !== undefined) ch.end(opts.stdin);
          else ch.end();
        }),
    );
  }

  async hold(argv: string[]): Promise<HeldCommand> {
    const ch = await this.openLine(shellLine(argv));
    return heldChannel(ch);
  }

  async writeFile(path: string, data: Buffer, mode: number): Promise<void> {
    // `cat` through the connection: no SFTP subsystem needed in the guest
    const line = shellLine(['sh', '-c', 'umask 077 && cat > "$1" && chmod "$2" "$1"', 'sh', path, mode.toString(8)]);
    const ch = await this.openLine(line);
    const r = await new Promise<ExecResult>((resolve) => {
      const tail = new OutputTail();
      let exitCode: number | null = null;
      ch.stderr.on('data', (d: Buffer) => tail.push(d));
      ch.on('data', (d: Buffer) => tail.push(d));
      ch.on('exit', (code: number | null) => (exitCode = code));
      ch.on('close', () => resolve({ exitCode, output: tail.text() }));
      ch.end(data);
    });
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `writing ${path} in the guest failed (exit ${r.exitCode}): ${r.output.trim()}`);
  }

  /** Ends the connection; a second call resolves with the first (no wait for a 'close' already seen). */
  close(): Promise<void> {
    this.closing ??= new Promise((resolve) => {
      this.client.once('close', () => resolve());
      this.client.end();
      setTimeout(resolve, 2000).unref();
    });
    return this.closing;
  }

  private openLine(line: string): Promise<ClientChannel> {
    return new Promise((resolve, reject) => {
      this.client.exec(line, (err, ch) => {
        if (err) reject(new FerryError('GUEST_UNREACHABLE', `the SSH connection (${this.label}) refused a command: ${err.message}`));
        else resolve(ch);
      });
    });
  }
}

/** Asks the server to kill the command (OpenSSH 7.9+ honours it) and closes the channel either way. */
function kill(ch: ClientChannel): void {
  try {
    ch.signal('KILL');
  } catch {
    /* the channel is gone already */
  }
  ch.close();
}

function heldChannel(ch: ClientChannel): HeldCommand {
  const tail = new OutputTail();
  let seen = '';
  let exitCode: number | null = null;
  let closed = false;
  const waiters: (() => void)[] = [];
  const onData = (d: Buffer): void => {
    tail.push(d);
    seen = (seen + d.toString('utf8')).slice(-8192);
    for (const w of waiters.splice(0)) w();
  };
  ch.on('data', onData);
  ch.stderr.on('data', onData);
  ch.on('exit', (code: number | null) => (exitCode = code));
  const done = new Promise<void>((resolve) =>
    ch.on('close', () => {
      closed = true;
      for (const w of waiters.splice(0)) w();
      resolve();
    }),
  );
  return {
    write: (text) => ch.write(text),
    waitFor: (marker, signal) =>
      new Promise<void>((resolve, reject) => {
        const check = (): void => {
          if (seen.includes(marker)) resolve();
          else if (closed) reject(new FerryError('GUEST_STEP_FAILED', `the command ended (exit ${exitCode}) before it was ready: ${tail.text().trim()}`));
          else if (signal?.aborted) reject(signal.reason);
          else waiters.push(check);
        };
        signal?.addEventListener('abort', () => check(), { once: true });
        check();
      }),
    end: async (graceMs) => {
      ch.end();
      const t = setTimeout(() => kill(ch), graceMs);
      await done;
      clearTimeout(t);
      return { exitCode, output: tail.text() };
    },
  };
}
