import { readFileSync } from 'node:fs';
import os from 'node:os';

/**
 * Who holds a repository lock, precisely enough to tell later whether that process still runs: a pid
 * alone is not enough (pids are reused, hosts reboot). On Linux the boot id and the process's start
 * time (clock ticks since boot, `/proc/<pid>/stat` field 22) pin the exact process; elsewhere they
 * are absent and only the pid is checked.
 */
export interface ProcessIdentity {
  host: string;
  pid: number;
  bootId?: string;
  startTicks?: string;
}

export function currentProcess(): ProcessIdentity {
  return { host: os.hostname(), pid: process.pid, bootId: bootId(), startTicks: startTicks(process.pid) };
}

/**
 * Why a process on this host is certainly gone, or undefined when it may still run. Only meaningful
 * for a holder whose `host` is this host.
 */
export function whyGone(holder: ProcessIdentity): string | undefined {
  const boot = bootId();
  if (holder.bootId && boot && holder.bootId !== boot) return `host ${holder.host} restarted since the lock was taken`;
  if (!pidRuns(holder.pid)) return `process ${holder.pid} no longer runs on ${holder.host}`;
  const ticks = startTicks(holder.pid);
  if (holder.startTicks && ticks && holder.startTicks !== ticks) return `pid ${holder.pid} now belongs to another process`;
  return undefined;
}

function pidRuns(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

function startTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may hold spaces and parentheses: count fields after the last ')'.
    const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return rest[19];
  } catch {
    return undefined;
  }
}
