import { FerryError, type GuestAgentChannel } from '@ferry/core/plugin';
import { MAX_OUTPUT, openQga, type ExecOptions, type ExecResult, type GuestChannel, type QgaConnection } from '@ferry/guest-common';

/** Bytes per `guest-file-write` (base64 grows them by a third; the agent reads lines of up to 4 MiB). */
const WRITE_CHUNK = 48 * 1024;

/**
 * A guest reached through its QEMU guest agent: commands with `guest-exec` and
 * `guest-exec-status` (polled), files with `guest-file-open`/`-write`/`-close`, and the agent's own
 * freeze (`guest-fsfreeze-*`, see `agentFreeze`).
 */
export class QgaChannel implements GuestChannel {
  readonly label: string;

  private constructor(readonly client: QgaConnection) {
    this.label = client.label;
  }

  /** `agent`: the socket (`unix:PATH`) or the source host's channel (`GuestOptions.agent`). */
  static async connect(agent: string | GuestAgentChannel, timeoutMs: number): Promise<QgaChannel> {
    return new QgaChannel(await openQga(agent, timeoutMs));
  }

  async exec(argv: string[], opts: ExecOptions = {}): Promise<ExecResult> {
    const started = (await this.client.execute('guest-exec', {
      path: argv[0],
      arg: argv.slice(1),
      'capture-output': true,
      ...(opts.stdin !== undefined && { 'input-data': Buffer.from(opts.stdin).toString('base64') }),
    })) as { pid: number };
    for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
      const st = (await this.client.execute('guest-exec-status', { pid: started.pid })) as {
        exited: boolean;
        exitcode?: number;
        signal?: number;
        'out-data'?: string;
        'err-data'?: string;
      };
      if (st.exited) {
        const out = Buffer.concat([Buffer.from(st['out-data'] ?? '', 'base64'), Buffer.from(st['err-data'] ?? '', 'base64')]);
        const max = opts.maxOutput ?? MAX_OUTPUT;
        return { exitCode: st.exitcode ?? null, output: out.subarray(Math.max(0, out.length - max)).toString('utf8') };
      }
      if (opts.signal?.aborted) {
        // the agent cannot kill a process: the runtime script bounds its own children
        throw opts.signal.reason instanceof Error ? opts.signal.reason : new FerryError('GUEST_TIMEOUT', `${argv[0]} was given up`);
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  async writeFile(path: string, data: Buffer, mode: number): Promise<void> {
    const handle = (await this.client.execute('guest-file-open', { path, mode: 'w' })) as number;
    try {
      for (let off = 0; off < data.length || off === 0; off += WRITE_CHUNK) {
        const chunk = data.subarray(off, off + WRITE_CHUNK);
        const r = (await this.client.execute('guest-file-write', { handle, 'buf-b64': chunk.toString('base64') })) as { count: number };
        if (r.count !== chunk.length) throw new FerryError('GUEST_STEP_FAILED', `the guest agent wrote ${r.count} of ${chunk.length} bytes to ${path}`);
        if (data.length === 0) break;
      }
    } finally {
      await this.client.execute('guest-file-close', { handle });
    }
    const r = await this.exec(['chmod', mode.toString(8), path]);
    if (r.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `chmod of ${path} in the guest failed: ${r.output.trim()}`);
  }

  /** The agent's freeze: `guest-fsfreeze-freeze` (or `-freeze-list` for named mounts); resolves how many it froze. */
  async agentFreeze(mounts: string[] | undefined, timeoutMs: number): Promise<number> {
    const r = mounts
      ? await this.client.execute('guest-fsfreeze-freeze-list', { mountpoints: mounts }, timeoutMs)
      : await this.client.execute('guest-fsfreeze-freeze', undefined, timeoutMs);
    return r as number;
  }

  /** `guest-fsfreeze-thaw`; resolves how many it thawed (0 when nothing was frozen). */
  async agentThaw(timeoutMs: number): Promise<number> {
    return (await this.client.execute('guest-fsfreeze-thaw', undefined, timeoutMs)) as number;
  }

  async agentStatus(): Promise<string> {
    return (await this.client.execute('guest-fsfreeze-status')) as string;
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
