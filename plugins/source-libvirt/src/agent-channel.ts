import { FerryError, type ErrorCode, type GuestAgentChannel } from '@ferry/core/plugin';
import { firstLines, type Virsh } from './virsh.js';

/** Room virsh gets beyond the agent's own `--timeout` before it is killed: libvirt answers first. */
const VIRSH_GRACE_MS = 15_000;

/**
 * The longest command virsh can take: it is one argument of the virsh process, and Linux limits one
 * argument to 32 pages (MAX_ARG_STRLEN, 128 KiB with its NUL). guest-linux writes files in 48 KiB
 * chunks (64 KiB as base64); a larger payload (a big user script as `guest-exec` input) is refused.
 */
export const MAX_AGENT_COMMAND = 128 * 1024 - 1;

/**
 * A running domain's QEMU guest agent through libvirt, for the guest runtimes (`via: qga`): libvirtd
 * holds the agent's socket, so each command goes through `virsh qemu-agent-command --timeout S
 * DOMAIN JSON` (libvirt syncs the channel itself). The freeze commands (`guest-fsfreeze-freeze`,
 * `-freeze-list`, `-thaw`, `-status`) go the same way: libvirt passes them on as they are, and the
 * runtime's in-guest watchdog stays armed as over a socket. libvirt marks a domain that received
 * such a command as tainted (`custom-ga-command`), as it does for every `qemu-agent-command`.
 */
export class LibvirtAgentChannel implements GuestAgentChannel {
  constructor(
    private readonly virsh: Virsh,
    /** The domain as libvirt knows it (name or UUID). */
    private readonly ref: string,
    /** The job's name of the VM, for errors. */
    private readonly vm: string,
  ) {}

  get label(): string {
    return `qga libvirt:${this.virsh.uri} domain ${this.vm}`;
  }

  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 30_000): Promise<unknown> {
    const seconds = Math.max(1, Math.ceil(timeoutMs / 1000));
    const call = { domain: this.vm, timeoutMs: seconds * 1000 + VIRSH_GRACE_MS };
    const text = JSON.stringify({ execute: command, ...(args && { arguments: args }) });
    if (Buffer.byteLength(text) > MAX_AGENT_COMMAND) {
      throw new FerryError(
        'GUEST_STEP_FAILED',
        `the guest agent command ${command} for domain ${this.vm} is ${Buffer.byteLength(text)} bytes; virsh qemu-agent-command takes at most ${MAX_AGENT_COMMAND} (one process argument): use smaller scripts or via: ssh`,
        this.virsh.context(call),
      );
    }
    const started = Date.now();
    const r = await this.virsh.tryRun(['qemu-agent-command', '--timeout', String(seconds), this.ref, text], call);
    if (!r.ok) {
      const code = agentErrorCode(r.stderr, Date.now() - started >= seconds * 1000);
      throw new FerryError(code, `the guest agent of domain ${this.vm} (through libvirt at ${this.virsh.uri}) ${AGENT_FAILURE[code]} ${command}: ${firstLines(r.stderr)}`, this.virsh.context(call));
    }
    let reply: { return?: unknown };
    try {
      reply = JSON.parse(r.stdout) as { return?: unknown };
    } catch {
      throw new FerryError('GUEST_STEP_FAILED', `the guest agent of domain ${this.vm} answered ${command} with what is not JSON: ${r.stdout.slice(0, 200)}`, this.virsh.context(call));
    }
    return reply.return;
  }
}

const AGENT_FAILURE: Partial<Record<ErrorCode, string>> = {
  GUEST_UNREACHABLE: 'cannot be reached for',
  GUEST_TIMEOUT: 'did not answer in time to',
  GUEST_STEP_FAILED: 'refused',
};

/**
 * What a failed `virsh qemu-agent-command` means (libvirt's messages, `LC_ALL=C`):
 * - `Guest agent is not responding: ...` (VIR_ERR_AGENT_UNRESPONSIVE): the agent is not connected or
 *   not running, or it did not answer within `--timeout` (`timedOut`: the call lasted that long).
 * - `QEMU guest agent is not configured` (no agent channel), `domain is not running`, `failed to
 *   get domain`/`Domain not found`: no agent to talk to.
 * - anything else (`unable to execute QEMU agent command 'X': ...`): the agent's own error reply.
 */
export function agentErrorCode(stderr: string, timedOut: boolean): 'GUEST_UNREACHABLE' | 'GUEST_TIMEOUT' | 'GUEST_STEP_FAILED' {
  const s = stderr.toLowerCase();
  if (s.includes('agent is not responding')) return timedOut ? 'GUEST_TIMEOUT' : 'GUEST_UNREACHABLE';
  if (s.includes('agent is not configured') || s.includes('is not connected') || s.includes('domain is not running') || s.includes('failed to get domain') || s.includes('domain not found')) {
    return 'GUEST_UNREACHABLE';
  }
  return 'GUEST_STEP_FAILED';
}
