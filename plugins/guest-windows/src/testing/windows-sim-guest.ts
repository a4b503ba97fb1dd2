import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startSshdGuest, type SshdGuest } from '@ferry/guest-common/testing';
import { startFakeQga, type FakeQga } from './fake-qga.js';
import type { SimConfig } from './windows-sim.js';

export type { SimConfig } from './windows-sim.js';
export { startFakeQga, VSS_HOLD_LIMIT_MS, type FakeQga } from './fake-qga.js';

/** A real sshd on loopback whose every session is answered by the Windows simulator (`windows-sim.ts`). */
export interface WindowsSimGuest extends SshdGuest {
  /** The simulator's state folder. */
  sim: string;
  /** Lines of `events.log` so far. */
  events(): string[];
  /** Replaces parts of `sim.json` (faults, writers, ...). */
  configure(change: Partial<SimConfig>): void;
  /** Starts a QEMU guest agent socket answering as qemu-ga on this simulated Windows (stopped with the guest). */
  startAgent(opts?: { holdLimitMs?: number }): Promise<FakeQga>;
}

const WRITERS = [
  { name: 'System Writer', id: '{e8132975-6f93-4464-a53e-1050253ae220}' },
  { name: 'SqlServerWriter', id: '{a65faa63-5ea8-4ebc-9dbd-a0c4db26912a}' },
  { name: 'Registry Writer', id: '{afbab4a2-367d-4d15-a586-71dbb18f8485}' },
];

/**
 * The simulated guest's machine: disk `disk0` (serial `disk0`), C: at 1 MiB with 4 KiB clusters
 * holding pagefile.sys in two runs and hiberfil.sys in one; disk `disk1` with D: and swapfile.sys;
 * databases `sales` (FULL) and `scratch` (SIMPLE).
 */
export function defaultSimConfig(): SimConfig {
  return {
    temp: 'C:\\Users\\ferry\\AppData\\Local\\Temp\\',
    writers: WRITERS,
    disks: [
      { Number: 0, SerialNumber: 'disk0', Size: 64 * 1024 ** 3 },
      { Number: 1, SerialNumber: 'disk1', Size: 32 * 1024 ** 3 },
    ],
    partitions: [
      { DriveLetter: 'C', DiskNumber: 0, Offset: 1048576, clusterSize: 4096, files: { 'pagefile.sys': [[0, 0x100, 0x2000], [0x100, 0x80, 0x5000]], 'hiberfil.sys': [[0, 0x40, 0x2100]] } },
      { DriveLetter: 'D', DiskNumber: 1, Offset: 16 * 1048576, clusterSize: 65536, files: { 'swapfile.sys': [[0, 0x10, 0x30], [0x10, 0x4, -1]] } },
    ],
    databases: [
      { name: 'sales', recovery: 'FULL' },
      { name: 'scratch', recovery: 'SIMPLE' },
    ],
    faults: {},
  };
}

export async function startWindowsSimGuest(dir: string, config: SimConfig = defaultSimConfig()): Promise<WindowsSimGuest> {
  const sim = path.join(dir, 'winsim');
  mkdirSync(path.join(sim, 'C'), { recursive: true });
  writeFileSync(path.join(sim, 'sim.json'), JSON.stringify(config, null, 2));
  writeFileSync(path.join(sim, 'events.log'), '');
  const program = fileURLToPath(new URL('./windows-sim.js', import.meta.url));
  const sshd = await startSshdGuest(path.join(dir, 'sshd'), { forceCommand: `FERRY_WINSIM='${sim}' '${process.execPath}' '${program}'` });
  const agents: FakeQga[] = [];
  return {
    ...sshd,
    stop: async () => {
      for (const a of agents.splice(0)) await a.close();
      await sshd.stop();
    },
    startAgent: async (opts) => {
      const a = await startFakeQga(sim, opts);
      agents.push(a);
      return a;
    },
    sim,
    events: () => readFileSync(path.join(sim, 'events.log'), 'utf8').split('\n').filter(Boolean),
    configure: (change) => {
      const cur = JSON.parse(readFileSync(path.join(sim, 'sim.json'), 'utf8')) as SimConfig;
      writeFileSync(path.join(sim, 'sim.json'), JSON.stringify({ ...cur, ...change }, null, 2));
    },
  };
}
