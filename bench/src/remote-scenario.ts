import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promises as fs, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { initCerts } from '@ferry/core/remote/wire';
import { ferryBackup, writeJob } from './ferry-case.js';
import { diskUsage } from './measure.js';
import { ferryRow, SCENARIOS, secs, type PassContext, type Row } from './scenarios.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const FERRY = path.join(ROOT, 'bin', 'ferry.js');
const MiB = 1024 * 1024;
/** The level both runs use (the job default). */
const LEVEL = 'optimal';

/**
 * Issue 4's benchmark case: a full backup of the same disk through the embedded pipe (both movers in
 * the CLI's process) and through the two services on loopback (`ferry proxy serve` reading,
 * `ferry repository serve` writing, mutual TLS between them), each into a fresh repository. Prints
 * the throughput of both and their ratio (services / embedded; 1.0 = the network path costs
 * nothing on this machine), and the CPU of each: the remote row's is the CLI's plus both services'
 * during the backup (issue 18's target: >= 0.9x the throughput, CPU within 10%).
 */
export async function remoteRuns(ctx: PassContext): Promise<Row[]> {
  const dir = path.join(ctx.work, 'remote');
  const ds = path.join(dir, 'ds');
  mkdirSync(ds, { recursive: true });
  await fs.rm(path.join(ds, 'vm.raw'), { force: true });
  await fs.link(ctx.images.base.file, path.join(ds, 'vm.raw'));
  const certs = path.join(dir, 'certs');
  await initCerts(certs, { force: true });

  const embeddedRepo = path.join(dir, 'repo-embedded');
  await fs.rm(embeddedRepo, { recursive: true, force: true });
  const embeddedJob = writeJob(dir, { name: 'bench-embedded', source: { kind: 'file', datastore: ds, disk: 'vm.raw' }, repo: embeddedRepo, level: LEVEL });
  const embedded = await ferryBackup(embeddedJob);
  const embeddedRow = ferryRow(SCENARIOS.remoteEmbedded, LEVEL, embedded.usage, embedded.report, await diskUsage(embeddedRepo));
  ctx.log(`ferry ${LEVEL}: ${SCENARIOS.remoteEmbedded} ${secs(embedded.usage)}`);
  await fs.rm(embeddedRepo, { recursive: true, force: true });

  const remoteRepo = path.join(dir, 'repo-remote');
  await fs.rm(remoteRepo, { recursive: true, force: true });
  const proxy = await serve(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs]);
  const repository = await serve(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', remoteRepo]).catch(async (err) => {
    await proxy.stop();
    throw err;
  });
  let remoteRow: Row;
  let servicesNote = '';
  try {
    const job = path.join(dir, 'bench-remote.yaml');
    writeFileSync(
      job,
      [
        'job: bench-remote',
        'source:',
        '  host: file',
        `  datastore: ${JSON.stringify(ds)}`,
        '  vms: [ { name: vm, disks: [vm.raw] } ]',
        'transport: hotadd',
        `repository: { server: ${JSON.stringify(repository.address)} }`,
        `proxies: [ { address: ${JSON.stringify(proxy.address)} } ]`,
        `certs: ${JSON.stringify(certs)}`,
        `storage: { blockSize: 1MiB, compression: ${LEVEL} }`,
      ].join('\n') + '\n',
    );
    // Resident services: what they do once after starting (worker threads) is not the backup's.
    await settled([proxy, repository]);
    const before = [proxy.cpuMs(), repository.cpuMs()];
    const remote = await ferryBackup(job);
    const [proxyMs, repositoryMs] = [proxy.cpuMs() - before[0], repository.cpuMs() - before[1]];
    remoteRow = ferryRow(SCENARIOS.remote, LEVEL, remote.usage, remote.report, await diskUsage(remoteRepo));
    // The row's CPU is the whole backup's: the CLI's and both services' during it (threads included).
    servicesNote = `CPU: CLI ${secs1(remoteRow.cpuMs)}, proxy ${secs1(proxyMs)}, repository ${secs1(repositoryMs)} s`;
    remoteRow.cpuMs += proxyMs + repositoryMs;
    ctx.log(`ferry ${LEVEL}: ${SCENARIOS.remote} ${secs(remote.usage)}`);
  } finally {
    await Promise.all([proxy.stop(), repository.stop()]);
    await fs.rm(remoteRepo, { recursive: true, force: true });
  }
  const size = ctx.images.base.sizeBytes;
  const rate = (r: Row): number => size / MiB / ((r.sessionMs ?? r.wallMs) / 1000);
  const ratio = rate(remoteRow) / rate(embeddedRow);
  const cpuRatio = remoteRow.cpuMs / embeddedRow.cpuMs;
  remoteRow.note += `; ${rate(remoteRow).toFixed(0)} MiB/s vs embedded ${rate(embeddedRow).toFixed(0)} MiB/s: ratio ${ratio.toFixed(2)}; ${servicesNote}: ${cpuRatio.toFixed(2)}x embedded`;
  console.log(
    `  · remote vs embedded, same ${(size / MiB).toFixed(0)} MiB disk, level ${LEVEL}: services ${rate(remoteRow).toFixed(0)} MiB/s, ` +
      `embedded ${rate(embeddedRow).toFixed(0)} MiB/s (session time), ratio services/embedded ${ratio.toFixed(2)}; ` +
      `CPU services+CLI ${secs1(remoteRow.cpuMs)} s vs embedded ${secs1(embeddedRow.cpuMs)} s (${cpuRatio.toFixed(2)}x; target >= 0.9x throughput, CPU <= 1.1x)`,
  );
  return [embeddedRow, remoteRow];
}

function secs1(ms: number): string {
  return (ms / 1000).toFixed(2);
}

const HZ = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/** User + system CPU of a process so far, its threads (ended ones too) included, from /proc. */
function processCpuMs(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return ((Number(f[11]) + Number(f[12])) * 1000) / HZ;
  } catch {
    return 0;
  }
}

/** Waits (at most 10 s) until the processes used no CPU for 300 ms: done starting up. */
async function settled(procs: { cpuMs: () => number }[]): Promise<void> {
  const total = (): number => procs.reduce((n, p) => n + p.cpuMs(), 0);
  const end = Date.now() + 10_000;
  let last = total();
  while (Date.now() < end) {
    await new Promise((r) => setTimeout(r, 300));
    const now = total();
    if (now === last) return;
    last = now;
  }
}

/**
 * A serve verb as a child process; resolves with the address from its `listening on` line. `cpuMs`:
 * the service's CPU so far, read before and after the backup (the services' start-up is not counted:
 * they are resident).
 */
async function serve(args: string[]): Promise<{ address: string; stop: () => Promise<void>; cpuMs: () => number }> {
  const child: ChildProcess = spawn(process.execPath, [FERRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await exited;
    clearTimeout(t);
  };
  const address = await new Promise<string>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`ferry ${args.join(' ')}: no "listening on" line in 20 s: ${err}`)), 20_000);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (\S+)/.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(m[1]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new Error(`ferry ${args.join(' ')} exited with ${code}: ${err}`));
    });
  }).catch(async (e) => {
    await stop();
    throw e;
  });
  return { address, stop, cpuMs: () => processCpuMs(child.pid!) };
}
