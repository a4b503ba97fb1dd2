import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createServer, type Server, type Socket } from 'node:net';
import path from 'node:path';
import type { SimConfig } from './windows-sim.js';

/**
 * A QEMU guest agent socket answering as qemu-ga on Windows does (QEMU's qga/commands-win32.c and
 * qga/vss-win32/requester.cpp): `guest-sync`, `guest-ping`, `guest-fsfreeze-freeze` through the VSS provider
 * (backup type from the registry value `VssOption` of `HKLM\SYSTEM\CurrentControlSet\Services\QEMU
 * Guest Agent VSS Provider`, default VSS_BT_FULL), `guest-fsfreeze-status`, `guest-fsfreeze-thaw`
 * (BackupComplete; `couldn't hold writes: fsfreeze is limited up to 10 seconds` when VSS let go of
 * the writes first), and `guest-exec`/`guest-exec-status`, whose command lines the simulator program
 * answers as it does behind sshd. Shares the simulator's state folder (writers, events, registry).
 */
export interface FakeQga {
  /** `unix:PATH` for the job's `agent:`. */
  agent: string;
  /** What `guest-fsfreeze-status` would answer now (VSS letting go counts as thawed). */
  status(): 'frozen' | 'thawed';
  close(): Promise<void>;
}

let agents = 0;

/** VSS lets go of held writes after this long (the kernel's flush-and-hold limit, 10 s). */
export const VSS_HOLD_LIMIT_MS = 10_000;

export async function startFakeQga(sim: string, opts: { holdLimitMs?: number } = {}): Promise<FakeQga> {
  const sock = path.join(sim, `qga-${++agents}.sock`);
  const limit = opts.holdLimitMs ?? VSS_HOLD_LIMIT_MS;
  const event = (l: string): void => writeFileSync(path.join(sim, 'events.log'), `${l}\n`, { flag: 'a' });
  const cfg = (): SimConfig => JSON.parse(readFileSync(path.join(sim, 'sim.json'), 'utf8')) as SimConfig;
  let frozen: { at: number; type: number; volumes: number; released: boolean; timer: NodeJS.Timeout } | undefined;
  const setWriters = (state: number, text: string, error = 'No error', only?: string): void => {
    const f = path.join(sim, 'writers.json');
    const cur = existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as Record<string, unknown>) : {};
    for (const w of cfg().writers) if (!only || w.name === only) cur[w.name] = { state, text, error };
    writeFileSync(f, JSON.stringify(cur));
  };
  const backupType = (): number => {
    const f = path.join(sim, 'registry.json');
    const v = existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as { VssOption?: number }).VssOption : undefined;
    return v !== undefined && v > 0 && v < 6 ? v : 1; // VSS_BT_FULL unless a valid VSS_BACKUP_TYPE is set
  };
  // guest-exec: the simulator program answers the command line as it does behind sshd
  const program = fileURLToPath(new URL('./windows-sim.js', import.meta.url));
  const procs = new Map<number, { exited: boolean; exitcode?: number; out: Buffer[]; err: Buffer[] }>();
  let nextPid = 4000;
  const exec = (args: Record<string, unknown>): number => {
    const pid = nextPid++;
    const p = { exited: false, exitcode: undefined as number | undefined, out: [] as Buffer[], err: [] as Buffer[] };
    procs.set(pid, p);
    const line = [args.path as string, ...((args.arg as string[]) ?? [])].join(' ');
    const child = spawn(process.execPath, [program], { env: { ...process.env, FERRY_WINSIM: sim, SSH_ORIGINAL_COMMAND: line }, stdio: ['pipe', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => p.out.push(d));
    child.stderr.on('data', (d: Buffer) => p.err.push(d));
    child.on('close', (code) => Object.assign(p, { exited: true, exitcode: code ?? 1 }));
    child.stdin.end(args['input-data'] ? Buffer.from(args['input-data'] as string, 'base64') : undefined);
    return pid;
  };
  const handle = (cmd: { execute: string; arguments?: Record<string, unknown> }): { return?: unknown; error?: { class: string; desc: string } } => {
    switch (cmd.execute) {
      case 'guest-sync':
        return { return: cmd.arguments?.id };
      case 'guest-ping':
        return { return: {} };
      case 'guest-exec':
        return { return: { pid: exec(cmd.arguments ?? {}) } };
      case 'guest-exec-status': {
        const p = procs.get(cmd.arguments?.pid as number);
        if (!p) return { error: { class: 'GenericError', desc: 'Invalid parameter \'pid\'' } };
        if (!p.exited) return { return: { exited: false } };
        procs.delete(cmd.arguments?.pid as number);
        return { return: { exited: true, exitcode: p.exitcode, 'out-data': Buffer.concat(p.out).toString('base64'), 'err-data': Buffer.concat(p.err).toString('base64') } };
      }
      case 'guest-fsfreeze-status':
        return { return: frozen && !frozen.released ? 'frozen' : 'thawed' };
      case 'guest-fsfreeze-freeze':
      case 'guest-fsfreeze-freeze-list': {
        if (frozen) return { return: 0 }; // already frozen
        const c = cfg();
        if (c.faults.writerFails) {
          setWriters(9, 'Failed', c.faults.writerFails.error, c.faults.writerFails.name);
          event(`agent freeze failed (${c.faults.writerFails.name})`);
          return { error: { class: 'GenericError', desc: 'DoSnapshotSet exited without Frozen event' } };
        }
        const type = backupType();
        const list = cmd.arguments?.mountpoints as string[] | undefined;
        const volumes = list ? list.length : c.partitions.length;
        setWriters(5, 'Waiting for completion');
        frozen = {
          at: Date.now(),
          type,
          volumes,
          released: false,
          timer: setTimeout(() => {
            frozen!.released = true;
            event(`agent VSS released the writes after ${limit} ms`);
          }, limit),
        };
        event(`agent freeze ${type === 5 ? 'VSS_BT_COPY' : type === 1 ? 'VSS_BT_FULL' : `type ${type}`} ${volumes} volume(s)`);
        return { return: volumes };
      }
      case 'guest-fsfreeze-thaw': {
        if (!frozen) return { return: 0 };
        const f = frozen;
        frozen = undefined;
        clearTimeout(f.timer);
        setWriters(1, 'Stable');
        if (f.released || Date.now() - f.at >= limit) {
          event('agent thaw: hold limit exceeded');
          return { error: { class: 'GenericError', desc: "couldn't hold writes: fsfreeze is limited up to 10 seconds" } };
        }
        event(`agent thaw ${f.type === 1 ? 'BackupComplete (full)' : 'BackupComplete (copy: writers record nothing)'}`);
        return { return: f.volumes };
      }
      default:
        return { error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` } };
    }
  };
  const server: Server = createServer((s: Socket) => {
    let buf = '';
    s.on('data', (d: Buffer) => {
      // 0xFF resets qemu-ga's JSON parser (a client's flush before guest-sync); it is never answered
      buf += Buffer.from(d.filter((b) => b !== 0xff)).toString('utf8');
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        s.write(`${JSON.stringify(handle(JSON.parse(line) as { execute: string }))}\n`);
      }
    });
    s.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(sock, resolve));
  return {
    agent: `unix:${sock}`,
    status: () => (frozen && !frozen.released && Date.now() - frozen.at < limit ? 'frozen' : 'thawed'),
    close: () =>
      new Promise<void>((resolve) => {
        if (frozen) clearTimeout(frozen.timer);
        server.close(() => resolve());
      }),
  };
}
