import { randomBytes } from 'node:crypto';
import { FerryError, type GuestOptions, type GuestRuntime, type GuestSession } from '@ferry/core/plugin';
import type { GuestChannel } from '@ferry/guest-common';
import { LinuxGuestSession } from './linux-guest-session.js';
import { QgaChannel } from './qga-channel.js';
import { RUNTIME_SCRIPT } from './runtime-script.js';
import { SshChannel } from '@ferry/guest-common';

/** Where the session's folder is made in the guest (mode 0700, removed by `close`). */
export const GUEST_FOLDER_PREFIX = '/tmp/ferry-guest-';

/**
 * The Linux guest runtime: reaches the guest over SSH or its QEMU guest agent, makes the session's
 * folder and copies the runtime script into it (the `deploy` step).
 */
export class LinuxGuestRuntime implements GuestRuntime {
  async connect(vm: string, o: GuestOptions, signal?: AbortSignal): Promise<GuestSession> {
    const timeoutMs = o.timeoutSeconds * 1000;
    let channel: GuestChannel;
    let agent: QgaChannel | undefined;
    if (o.via === 'ssh') {
      if (!o.host || !o.credentials.knownHosts) throw new FerryError('INTERNAL', `guest of vm ${vm}: ssh without host or knownHosts passed the job checks`, { vm });
      channel = await SshChannel.connect(
        {
          host: o.host,
          port: o.port ?? 22,
          user: o.user ?? 'root',
          privateKey: o.credentials.privateKey,
          password: o.credentials.password,
          knownHosts: o.credentials.knownHosts,
          timeoutMs,
        },
        signal,
      );
      if (o.freeze === 'agent' && o.agent) agent = await QgaChannel.connect(o.agent, timeoutMs).catch(async (err: unknown) => {
        await channel.close();
        throw err;
      });
    } else if (o.via === 'qga') {
      if (!o.agent) throw new FerryError('INTERNAL', `guest of vm ${vm}: qga without agent passed the job checks`, { vm });
      agent = await QgaChannel.connect(o.agent, Math.min(timeoutMs, 10_000));
      channel = agent;
    } else {
      throw new FerryError('JOB_INVALID', `guest of vm ${vm}: via ${o.via} is not one guest-linux knows (ssh, qga)`, { vm });
    }
    const dir = `${GUEST_FOLDER_PREFIX}${randomBytes(6).toString('hex')}`;
    try {
      const made = await channel.exec(['mkdir', '-p', '-m', '700', dir], { signal });
      if (made.exitCode !== 0) throw new FerryError('GUEST_STEP_FAILED', `cannot make ${dir} in the guest: ${made.output.trim()}`, { vm });
      await channel.writeFile(`${dir}/ferry-guest.sh`, Buffer.from(RUNTIME_SCRIPT), 0o700);
    } catch (err) {
      await channel.exec(['rm', '-rf', '--', dir]).catch(() => undefined);
      await channel.close().catch(() => undefined);
      if (agent && agent !== channel) await agent.close().catch(() => undefined);
      throw err;
    }
    const boot = await channel.exec(['cat', '/proc/sys/kernel/random/boot_id']).catch(() => undefined);
    return new LinuxGuestSession(channel, agent, o, dir, boot?.exitCode === 0 ? boot.output.trim() : undefined);
  }
}
