import { FerryError } from '@ferry/core/plugin';
import { MAX_OUTPUT, type ExecOptions, type ExecResult, type QgaConnection } from '@ferry/guest-common';
import type { LineChannel } from './powershell.js';

/**
 * PowerShell through the QEMU guest agent (`via: qga`, no SSH in the guest): each command line
 * (`powershell.exe ... -EncodedCommand B64`, words without spaces) becomes `guest-exec` of its first
 * word with the rest as arguments, standard input as `input-data`, and `guest-exec-status` is polled
 * until it exited (QEMU's "QEMU Guest Agent Protocol Reference"). The agent cannot stop a process:
 * a given-up command runs on in the guest (the runtime bounds its own children).
 */
export class QgaLineChannel implements LineChannel {
  readonly label: string;

  constructor(readonly client: QgaConnection) {
    this.label = client.label;
  }

  async execLine(line: string, opts: ExecOptions = {}): Promise<ExecResult> {
    const [path, ...arg] = line.split(' ');
    const started = (await this.client.execute('guest-exec', {
      path,
      arg,
      'capture-output': true,
      ...(opts.stdin !== undefined && { 'input-data': Buffer.from(opts.stdin).toString('base64') }),
    })) as { pid: number };
    for (let delay = 20; ; delay = Math.min(delay * 2, 250)) {
      const st = (await this.client.execute('guest-exec-status', { pid: started.pid })) as { exited: boolean; exitcode?: number; 'out-data'?: string; 'err-data'?: string };
      if (st.exited) {
        const out = Buffer.concat([Buffer.from(st['out-data'] ?? '', 'base64'), Buffer.from(st['err-data'] ?? '', 'base64')]);
        return { exitCode: st.exitcode ?? null, output: out.subarray(Math.max(0, out.length - (opts.maxOutput ?? MAX_OUTPUT))).toString('utf8') };
      }
      if (opts.signal?.aborted) throw opts.signal.reason instanceof Error ? opts.signal.reason : new FerryError('GUEST_TIMEOUT', `${path} was given up`);
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  close(): Promise<void> {
    return this.client.close();
  }
}
