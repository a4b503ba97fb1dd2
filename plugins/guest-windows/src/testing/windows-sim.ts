/**
 * A simulated Windows guest behind a real sshd (its `ForceCommand`): the command each SSH session
 * sent arrives in SSH_ORIGINAL_COMMAND as `powershell.exe ... -EncodedCommand B64`, and this
 * program answers it the way Windows PowerShell 5.1 and the tools it calls would, from the
 * outputs Microsoft documents (see plugins/guest-windows/README.md, "The simulator"). It does not
 * run PowerShell: it recognises the scripts guest-windows sends and refuses anything else as
 * PowerShell does ("The term ... is not recognized"), so a new command needs a new answer here.
 *
 * State lives in the folder FERRY_WINSIM names: `sim.json` (writers, disks, partitions, files'
 * extents, databases, faults), `C/...` (the guest's C: drive), `events.log` (what happened, in
 * order, for the tests) and `writers.json` (the writers' current states).
 */
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';

export interface SimConfig {
  /** `[IO.Path]::GetTempPath()`. */
  temp: string;
  writers: { name: string; id: string }[];
  disks: { Number: number; SerialNumber: string; Size: number }[];
  partitions: { DriveLetter: string; DiskNumber: number; Offset: number; clusterSize: number; files: Record<string, [number, number, number][]> }[];
  databases: { name: string; recovery: 'FULL' | 'SIMPLE' | 'BULK_LOGGED' }[];
  /** qemu-ga's VSS provider is installed (its service key exists in the registry); default true. */
  agentProvider?: boolean;
  faults: {
    /** This writer fails in `create` (VSS_WS_FAILED_AT_FREEZE with this last error). */
    writerFails?: { name: string; error: string };
    /** `BACKUP LOG` fails. */
    truncationFails?: boolean;
    /** `fsutil file queryextents` of these files fails as for a file another process holds. */
    queryFails?: string[];
    /** The runtime's `freeze` answers only this long after the set was created (the set is held meanwhile). */
    freezeDelayMs?: number;
  };
}

const SIM = process.env.FERRY_WINSIM ?? '';
const STABLE = { state: 1, text: 'Stable', error: 'No error' };

function cfg(): SimConfig {
  return JSON.parse(readFileSync(path.join(SIM, 'sim.json'), 'utf8')) as SimConfig;
}

export function event(line: string): void {
  appendFileSync(path.join(SIM, 'events.log'), `${line}\n`);
}

/** `C:\Users\x` → `<sim>/C/Users/x`. */
function local(winPath: string): string {
  const m = /^([A-Za-z]):\\?(.*)$/.exec(winPath.replace(/\\+$/, ''));
  if (!m) throw new Error(`not a Windows path: ${winPath}`);
  return path.join(SIM, m[1].toUpperCase(), ...m[2].split('\\').filter(Boolean));
}

type WriterState = Record<string, { state: number; text: string; error: string }>;
function writerStates(): WriterState {
  const f = path.join(SIM, 'writers.json');
  return existsSync(f) ? (JSON.parse(readFileSync(f, 'utf8')) as WriterState) : {};
}
function setWriters(s: WriterState): void {
  writeFileSync(path.join(SIM, 'writers.json'), JSON.stringify(s));
}

/** `vssadmin list writers` as Windows Server prints it. */
function vssadminListWriters(): string {
  const states = writerStates();
  const lines = ['vssadmin 1.1 - Volume Shadow Copy Service administrative command-line tool', '(C) Copyright 2001-2013 Microsoft Corp.', ''];
  for (const w of cfg().writers) {
    const s = states[w.name] ?? STABLE;
    lines.push(`Writer name: '${w.name}'`, `   Writer Id: ${w.id}`, `   Writer Instance Id: {${randomUUID()}}`, `   State: [${s.state}] ${s.text}`, `   Last error: ${s.error}`, '');
  }
  return lines.join('\r\n');
}

function out(text: string): void {
  process.stdout.write(text.endsWith('\n') ? text : `${text}\r\n`);
}

function notRecognized(term: string): never {
  process.stderr.write(`${term} : The term '${term}' is not recognized as the name of a cmdlet, function, script file, or operable program.\r\n`);
  process.exit(1);
}

async function stdinText(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** DiskShadow's `create` output for a new set (the "create" page's example, verbose). */
function diskShadowCreate(dir: string, mode: string, volumes: string[]): string {
  const setId = `{${randomUUID()}}`;
  const lines = [
    'Microsoft DiskShadow version 1.0',
    'Copyright (C) 2013 Microsoft Corporation',
    'On computer:  WIN-SIM,  12/4/2026 6:50:00 PM',
    '',
    '-> set verbose on',
    '-> set context volatile',
    '-> begin backup',
    ...volumes.map((v) => `-> add volume ${v}`),
    '-> create',
    ...volumes.map((_v, i) => `Alias VSS_SHADOW_${i + 1} for shadow ID {${randomUUID()}} set as environment variable.`),
    `Alias VSS_SHADOW_SET for shadow set ID ${setId} set as environment variable.`,
    '',
    `Querying all shadow copies with the shadow copy set ID ${setId}`,
    '',
  ];
  volumes.forEach((v, i) => {
    lines.push(
      `\t* Shadow copy ID = {${randomUUID()}}\t\t%VSS_SHADOW_${i + 1}%`,
      `\t\t- Shadow copy set: ${setId}\t%VSS_SHADOW_SET%`,
      `\t\t- Original count of shadow copies = ${volumes.length}`,
      `\t\t- Original volume name: \\\\?\\Volume{${randomUUID()}}\\ [${v.replace(/\\?$/, '\\')}]`,
      '\t\t- Creation time: 12/4/2026 6:50:01 PM',
      `\t\t- Shadow copy device name: \\\\?\\GLOBALROOT\\Device\\HarddiskVolumeShadowCopy${i + 1}`,
      '\t\t- Attributes:  Auto_Release Differential',
      '',
    );
  });
  lines.push(`Number of shadow copies listed: ${volumes.length}`, `-> exec "${dir}\\hold.cmd"`, '');
  writeFileSync(path.join(local(dir), 'vss.log'), lines.join('\r\n'));
  writeFileSync(path.join(local(dir), 'set.json'), JSON.stringify({ setId, mode }));
  return lines.join('\r\n');
}

/** The held DiskShadow (`hold.cmd` waiting): releases the set on `release` or after `limit` s. */
async function hold(dirLocal: string, limit: number, mode: string): Promise<void> {
  const { setId } = JSON.parse(readFileSync(path.join(dirLocal, 'set.json'), 'utf8')) as { setId: string };
  const deadline = Date.now() + limit * 1000;
  let how: string;
  for (;;) {
    if (existsSync(path.join(dirLocal, 'release'))) {
      how = existsSync(path.join(dirLocal, 'abort')) ? 'aborted (no BackupComplete)' : mode === 'full' ? 'end backup (BackupComplete)' : 'ended without BackupComplete (copy)';
      break;
    }
    if (Date.now() > deadline) {
      writeFileSync(path.join(dirLocal, 'watchdog'), 'released by the watchdog');
      how = 'released by the watchdog (no BackupComplete)';
      break;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const states = writerStates();
  for (const [k, v] of Object.entries(states)) if (v.state === 5) states[k] = STABLE;
  setWriters(states);
  appendFileSync(path.join(dirLocal, 'vss.log'), how.startsWith('end backup') ? '-> end backup\r\n-> exit\r\n' : '-> exit\r\n');
  event(`release ${setId} ${how}`);
  rmSync(path.join(dirLocal, 'diskshadow.pid'), { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitHolder(dirLocal: string, ms: number): Promise<boolean> {
  const f = path.join(dirLocal, 'diskshadow.pid');
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (!existsSync(f) || !alive(Number(readFileSync(f, 'utf8')))) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

/** `& 'DIR\ferry-guest.ps1' 'SUB' 'ARG'...; exit $LASTEXITCODE`: what the deployed runtime does. */
async function runtime(dir: string, args: string[]): Promise<number> {
  const d = local(dir);
  if (!existsSync(path.join(d, 'ferry-guest.ps1'))) notRecognized(`${dir}\\ferry-guest.ps1`);
  const [sub, ...rest] = args;
  if (sub === 'run') {
    const [limit, script] = rest;
    event(`run ${path.win32.basename(script)}`);
    const sh = readFileSync(local(script), 'utf8').split(/\r?\n/).filter((l) => l.startsWith('# sim-sh: ')).map((l) => l.slice('# sim-sh: '.length));
    if (!sh.length) return 0;
    const r = spawnSync('sh', ['-c', sh.join('\n')], { encoding: 'utf8', timeout: Number(limit) * 1000, killSignal: 'SIGKILL' });
    out(`${r.stdout ?? ''}${r.stderr ?? ''}`);
    if (r.error || r.signal) {
      out(`ferry-guest: ${path.win32.basename(script)} was stopped after ${limit} s`);
      return 124;
    }
    return r.status ?? 1;
  }
  if (sub === 'freeze') {
    const [limit, mode, ...volumes] = rest;
    for (const f of ['release', 'abort', 'watchdog', 'vss.log', 'set.json']) rmSync(path.join(d, f), { force: true });
    const text = diskShadowCreate(dir, mode, volumes);
    const c = cfg();
    const states: WriterState = {};
    for (const w of c.writers) {
      const fail = c.faults.writerFails?.name === w.name;
      states[w.name] = fail ? { state: 9, text: 'Failed', error: c.faults.writerFails!.error } : { state: 5, text: 'Waiting for completion', error: 'No error' };
    }
    setWriters(states);
    const { setId } = JSON.parse(readFileSync(path.join(d, 'set.json'), 'utf8')) as { setId: string };
    event(`create ${setId} ${mode} ${volumes.join(' ')}`);
    const child = spawn(process.execPath, [fileURLToPath(import.meta.url), 'hold', d, limit, mode], { detached: true, stdio: 'ignore', env: process.env });
    writeFileSync(path.join(d, 'diskshadow.pid'), String(child.pid));
    child.unref();
    if (c.faults.freezeDelayMs) await new Promise((r) => setTimeout(r, c.faults.freezeDelayMs));
    out(text);
    return 0;
  }
  if (sub === 'thaw') {
    writeFileSync(path.join(d, 'release'), 'thaw');
    const ended = await waitHolder(d, 10_000);
    out(existsSync(path.join(d, 'vss.log')) ? readFileSync(path.join(d, 'vss.log'), 'utf8') : '');
    if (existsSync(path.join(d, 'watchdog'))) out('ferry-guest: the watchdog had released the set already');
    return ended ? 0 : 1;
  }
  if (sub === 'abort') {
    writeFileSync(path.join(d, 'abort'), 'abort');
    writeFileSync(path.join(d, 'release'), 'abort');
    await waitHolder(d, 5000);
    return 0;
  }
  out('usage: ferry-guest.ps1 run|freeze|wait|thaw|abort');
  return 2;
}

/** Single-quoted PowerShell strings of a line, unquoted. */
function psStrings(s: string): string[] {
  return [...s.matchAll(/'((?:[^']|'')*)'/g)].map((m) => m[1].replace(/''/g, "'"));
}

let lastExit = 0;

function fsutil(args: string): void {
  const c = cfg();
  let m: RegExpExecArray | null;
  if ((m = /^fsinfo ntfsinfo ([A-Z]):$/i.exec(args))) {
    const p = c.partitions.find((x) => x.DriveLetter === m![1].toUpperCase());
    if (!p) return void ((lastExit = 1), out('Error:  The system cannot find the path specified.'));
    out(['NTFS Volume Serial Number :        0x1a2b3c4d5e6f7a8b', 'NTFS Version      :                3.1', 'Bytes Per Sector  :                512', 'Bytes Per Physical Sector :        512', `Bytes Per Cluster :                ${p.clusterSize}  (${p.clusterSize / 1024} KB)`, 'Bytes Per FileRecord Segment    :  1024'].join('\r\n'));
    lastExit = 0;
  } else if ((m = /^file queryextents ([A-Z]):\\(.+)$/i.exec(args))) {
    const p = c.partitions.find((x) => x.DriveLetter === m![1].toUpperCase());
    if (c.faults.queryFails?.includes(m[2].toLowerCase())) {
      lastExit = 1;
      return out('Error:  The process cannot access the file because it is being used by another process.');
    }
    const runs = p?.files[m[2].toLowerCase()];
    if (!runs) return void ((lastExit = 1), out('Error:  The system cannot find the file specified.'));
    const hex = (n: number): string => `0x${n.toString(16)}`;
    out(runs.map(([vcn, n, lcn]) => `VCN: ${hex(vcn)}        Clusters: ${hex(n)}        LCN: ${lcn < 0 ? '0xffffffffffffffff' : hex(lcn)}`).join('\r\n'));
    lastExit = 0;
  } else notRecognized(`fsutil ${args}`);
}

function sqlcmd(line: string): void {
  const q = psStrings(line).pop() ?? '';
  const c = cfg();
  let m: RegExpExecArray | null;
  if (/FROM sys\.databases/.test(q)) {
    out(c.databases.filter((d) => d.recovery !== 'SIMPLE').map((d) => d.name).join('\r\n'));
    lastExit = 0;
  } else if ((m = /^BACKUP LOG \[(.+)\] TO DISK = N'NUL'$/.exec(q))) {
    if (c.faults.truncationFails) {
      out(`Msg 3013, Level 16, State 1, Server WIN-SIM, Line 1\r\nBACKUP LOG is terminating abnormally.`);
      lastExit = 1;
      return;
    }
    event(`BACKUP LOG [${m[1]}] TO DISK = N'NUL'`);
    out(`Processed 3 pages for database '${m[1]}', file '${m[1]}_log' on file 1.\r\nBACKUP LOG successfully processed 3 pages in 0.012 seconds (1.953 MB/sec).`);
    lastExit = 0;
  } else {
    out(`Msg 102, Level 15, State 1, Server WIN-SIM, Line 1\r\nIncorrect syntax near '${q.slice(0, 20)}'.`);
    lastExit = 1;
  }
}

/** ConvertTo-Json of a one-item array is the item itself. */
function psJsonList<T>(l: T[]): T | T[] {
  return l.length === 1 ? l[0] : l;
}

async function main(): Promise<number> {
  const line = process.env.SSH_ORIGINAL_COMMAND ?? '';
  const m = /^powershell\.exe .*-EncodedCommand ([A-Za-z0-9+/=]+)$/.exec(line);
  if (!m) {
    process.stderr.write(`'${line.split(' ')[0]}' is not recognized as an internal or external command,\r\noperable program or batch file.\r\n`);
    return 1;
  }
  const script = Buffer.from(m[1], 'base64').toString('utf16le');
  appendFileSync(path.join(SIM, 'commands.log'), `${JSON.stringify(script)}\n`);
  const c = cfg();
  if (script.includes('GetTempPath()')) {
    const name = psStrings(script.split('\n')[0])[0];
    const dir = `${c.temp}${name}`;
    mkdirSync(local(dir), { recursive: true });
    writeFileSync(path.join(local(dir), 'ferry-guest.ps1'), Buffer.from((await stdinText()).trim(), 'base64'));
    event(`deploy ${name}`);
    out(dir);
    return 0;
  }
  if (script.startsWith('$b = [Console]::In.ReadToEnd(); [IO.File]::WriteAllBytes(')) {
    const [file] = psStrings(script);
    writeFileSync(local(file), Buffer.from((await stdinText()).trim(), 'base64'));
    return 0;
  }
  if (script.startsWith('& ')) {
    const [ps1, ...args] = psStrings(script);
    return runtime(path.win32.dirname(ps1), args);
  }
  if (script.startsWith('Remove-Item -LiteralPath ')) {
    const [dir] = psStrings(script);
    rmSync(local(dir), { recursive: true, force: true });
    event(`remove ${path.win32.basename(dir)}`);
    return 0;
  }
  if (script.startsWith('Set-ItemProperty -LiteralPath ')) {
    const [key] = psStrings(script);
    const m2 = /-Name VssOption -Value (\d+) -Type DWord/.exec(script);
    if (c.agentProvider === false || !m2 || !key.endsWith('\\QEMU Guest Agent VSS Provider')) {
      process.stderr.write(`Set-ItemProperty : Cannot find path '${key}' because it does not exist.\r\n`);
      return 1;
    }
    writeFileSync(path.join(SIM, 'registry.json'), JSON.stringify({ VssOption: Number(m2[1]) }));
    event(`registry VssOption=${m2[1]}`);
    return 0;
  }
  if (script.includes('Get-Volume')) {
    out(c.partitions.map((p) => `${p.DriveLetter}:`).join(' '));
    return 0;
  }
  if (script.includes('Get-Partition')) {
    const partitions = c.partitions.map((p) => ({ DriveLetter: p.DriveLetter, DiskNumber: p.DiskNumber, Offset: p.Offset, Files: psJsonList(Object.keys(p.files)) }));
    out(JSON.stringify({ Partitions: psJsonList(partitions), Disks: psJsonList(c.disks) }));
    return 0;
  }
  // statements, one per line
  for (const stmt of script.split('\n').map((l) => l.trim()).filter(Boolean)) {
    if (stmt === 'vssadmin list writers') {
      out(vssadminListWriters());
      lastExit = 0;
    } else if (stmt.startsWith('Write-Output ')) out(psStrings(stmt)[0]);
    else if (stmt.startsWith('fsutil ')) fsutil(stmt.slice('fsutil '.length));
    else if (stmt.startsWith('sqlcmd.exe ')) sqlcmd(stmt);
    else if (stmt === 'if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }') {
      if (lastExit !== 0) return lastExit;
    } else notRecognized(stmt.split(' ')[0]);
  }
  return lastExit;
}

if (process.argv[2] === 'hold') {
  void hold(process.argv[3], Number(process.argv[4]), process.argv[5]);
} else if (SIM) {
  main().then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`${err.stack ?? err.message}\r\n`);
      process.exit(1);
    },
  );
}
