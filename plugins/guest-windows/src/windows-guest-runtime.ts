import { randomBytes } from 'node:crypto';
import { FerryError, type GuestOptions, type GuestRuntime, type GuestSession } from '@ferry/core/plugin';
import { openQga, SshChannel, type QgaConnection } from '@ferry/guest-common';
import { PowerShell, psQuote, type LineChannel } from './powershell.js';
import { QgaLineChannel } from './qga-line-channel.js';
import { RUNTIME_PS1 } from './runtime-script.js';
import { windowsApplications } from './sqlserver.js';
import { WindowsGuestSession } from './windows-guest-session.js';

/** The session folder's name in the guest's `%TEMP%` (removed by `close`). */
export const GUEST_FOLDER_PREFIX = 'ferry-';

/**
 * The Windows guest runtime: reaches the guest over OpenSSH (Win32-OpenSSH, the host key checked
 * as for Linux guests), makes `%TEMP%\ferry-<random>` and writes `ferry-guest.ps1` into it (the
 * `deploy` step). `via: qga` runs the same PowerShell through the agent's `guest-exec` instead;
 * with an agent the freeze goes through qemu-ga's VSS provider (`guest-fsfreeze-freeze`), which
 * holds the writers across the hypervisor's snapshot.
 */
export class WindowsGuestRuntime implements GuestRuntime {
  async connect(vm: string, o: GuestOptions, signal?: AbortSignal): Promise<GuestSession> {
    if (o.via !== 'ssh' && o.via !== 'qga') throw new FerryError('JOB_INVALID', `guest of vm ${vm}: via ${o.via} is not one guest-windows knows (ssh, qga)`, { vm });
    if (o.freeze === 'fsfreeze') {
      throw new FerryError('JOB_INVALID', `guest of vm ${vm}: freeze: fsfreeze is Linux's; guest-windows knows auto (the agent's VSS freeze when agent is known, else a DiskShadow set), agent and none`, { vm });
    }
    const useAgent = o.freeze === 'agent' || (o.freeze === 'auto' && o.agent !== undefined);
    if ((useAgent || o.via === 'qga') && !o.agent) throw new FerryError('INTERNAL', `guest of vm ${vm}: the agent socket is missing but passed the job checks`, { vm });
    windowsApplications(o.applications);
    let channel: LineChannel;
    let agent: QgaConnection | undefined;
    if (o.via === 'qga') {
      agent = await openQga(o.agent!, Math.min(o.timeoutSeconds * 1000, 10_000));
      channel = new QgaLineChannel(agent);
    } else {
      if (!o.host || !o.credentials.knownHosts) throw new FerryError('INTERNAL', `guest of vm ${vm}: ssh without host or knownHosts passed the job checks`, { vm });
      const ssh = await SshChannel.connect(
        {
          host: o.host,
          port: o.port ?? 22,
          user: o.user ?? 'Administrator',
          privateKey: o.credentials.privateKey,
          password: o.credentials.password,
          knownHosts: o.credentials.knownHosts,
          timeoutMs: o.timeoutSeconds * 1000,
        },
        signal,
      );
      channel = ssh;
      if (useAgent) {
        agent = await openQga(o.agent!, Math.min(o.timeoutSeconds * 1000, 10_000)).catch(async (err: unknown) => {
          await ssh.close().catch(() => undefined);
          throw err;
        });
      }
    }
    const ps = new PowerShell(channel, channel.label);
    const name = `${GUEST_FOLDER_PREFIX}${randomBytes(6).toString('hex')}`;
    let dir: string | undefined;
    try {
      const out = await ps.check(
        'making the session folder',
        [
          `$d = Join-Path ([IO.Path]::GetTempPath()) ${psQuote(name)}`,
          'New-Item -ItemType Directory -Path $d -Force | Out-Null',
          '$b = [Console]::In.ReadToEnd()',
          "[IO.File]::WriteAllBytes((Join-Path $d 'ferry-guest.ps1'), [Convert]::FromBase64String($b.Trim()))",
          'Write-Output $d',
        ].join('\n'),
        { stdin: Buffer.from(RUNTIME_PS1).toString('base64'), signal },
      );
      dir = out.trim().split(/\r?\n/).pop()!.trim();
      if (!dir.endsWith(name)) throw new FerryError('GUEST_STEP_FAILED', `the guest made the session folder but answered ${JSON.stringify(out.trim())}`, { vm });
    } catch (err) {
      if (dir) await ps.run(`Remove-Item -LiteralPath ${psQuote(dir)} -Recurse -Force`).catch(() => undefined);
      await channel.close().catch(() => undefined);
      await agent?.close().catch(() => undefined);
      throw err;
    }
    return new WindowsGuestSession(ps, o, dir, useAgent || o.via === 'qga' ? agent : undefined);
  }
}
