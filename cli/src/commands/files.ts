import type { CommandModule } from 'yargs';
import { FerryError, JobRuntime, PointFiles, extractFiles, humanSize, type ExtractResult, type FileStat, type FileSystem, type Volume } from '@ferry/core';
import { EXIT, printJson, table } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  vm: string;
  disk: string;
  point: string;
  partition?: number;
  path?: string;
  extract?: string;
  to?: string;
  force: boolean;
  json: boolean;
}

interface Listing {
  partition: number;
  fileSystem: string | null;
  path: string;
  entries?: EntryJson[];
  error?: { code: string; message: string };
}

/** One entry of a listing as --json prints it (documented in docs/cli.md). */
interface EntryJson {
  name: string;
  type: FileStat['type'];
  size: number;
  mode: number;
  modeString: string;
  uid: number;
  gid: number;
  mtime: string;
  target?: string;
}

export function filesCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.files,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('disk', { type: 'string', demandOption: true, describe: 'disk name as in the job' })
        .option('point', { type: 'string', default: 'latest', describe: 'restore point id, or latest' })
        .option('partition', {
          type: 'number',
          describe: 'partition number as Linux names it (sda1 → 1; 0 = a disk without partition table). Default: the only partition with a file system; --path lists each when there are several',
        })
        .option('path', { type: 'string', describe: 'folder (or file) to list inside the file system, e.g. /etc' })
        .option('extract', { type: 'string', describe: 'file, folder (recursively) or symlink to extract; needs --to' })
        .option('to', { type: 'string', describe: 'local folder to extract into (created when missing)' })
        .option('force', { type: 'boolean', default: false, describe: 'replace existing files and links under --to (folders are merged into)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the result as JSON on stdout' }) as never,
    handler: async (args) => {
      if (args.extract !== undefined && args.to === undefined) throw new FerryError('CLI_USAGE', '--extract needs --to DIR');
      if (args.to !== undefined && args.extract === undefined) throw new FerryError('CLI_USAGE', '--to is only used with --extract PATH');
      if (args.path !== undefined && args.extract !== undefined) throw new FerryError('CLI_USAGE', 'give --path (list) or --extract (copy out), not both');
      if (args.partition !== undefined && (!Number.isInteger(args.partition) || args.partition < 0)) {
        throw new FerryError('CLI_USAGE', `--partition must be a partition number (0 or more), not ${args.partition}`);
      }
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      try {
        const pf = await PointFiles.open(rt, { vm: args.vm, disk: args.disk, point: args.point });
        try {
          const head = {
            vm: args.vm,
            disk: args.disk,
            restorePoint: pf.restorePoint,
            diskSize: pf.diskSize,
            scheme: pf.table.scheme,
            partitions: pf.volumes.map(volumeJson),
            warnings: pf.table.warnings,
          };
          if (!args.json) for (const w of head.warnings) process.stderr.write(`ferry: partition table: ${w}\n`);
          if (args.extract !== undefined) await extract(pf, args, head);
          else if (args.path !== undefined) await list(pf, args, head);
          else {
            if (args.partition !== undefined) pf.select(args.partition);
            if (args.json) printJson({ ...head, read: pf.figures });
            else printPartitions(head);
          }
          setCode(EXIT.ok);
        } finally {
          await pf.close();
        }
      } finally {
        await rt.close();
      }
    },
  };
}

type Head = { vm: string; disk: string; restorePoint: string; diskSize: number; scheme: string; partitions: ReturnType<typeof volumeJson>[]; warnings: string[] };

function volumeJson(v: Volume): { partition: number; start: number; size: number; type: string; name?: string; fileSystem: string | null } {
  return { partition: v.partition, start: v.start, size: v.size, type: v.typeName, ...(v.name ? { name: v.name } : {}), fileSystem: v.fileSystem };
}

function printPartitions(head: Head): void {
  process.stdout.write(`${head.vm}/${head.disk} at ${head.restorePoint}: ${humanSize(head.diskSize)}, partition table: ${head.scheme}\n`);
  process.stdout.write(
    table(
      ['PART', 'START', 'SIZE', 'TYPE', 'NAME', 'FILE SYSTEM'],
      head.partitions.map((p) => [String(p.partition), String(p.start), humanSize(p.size), p.type, p.name ?? '', p.fileSystem ?? '-']),
    ),
  );
}

async function list(pf: PointFiles, args: Args, head: Head): Promise<void> {
  const listings: Listing[] = [];
  const volumes = pf.select(args.partition);
  const errors: FerryError[] = [];
  for (const volume of volumes) {
    try {
      const fs = await pf.fileSystem(volume);
      const st = await fs.stat(args.path!);
      const stats = st.type === 'dir' ? await fs.list(args.path!) : [st];
      const entries: EntryJson[] = [];
      for (const e of stats) entries.push(await entryJson(fs, args.path!, st.type === 'dir', e));
      listings.push({ partition: volume.partition, fileSystem: fs.kind, path: args.path!, entries });
    } catch (err) {
      // Of several volumes, one without the path (or unreadable) is reported beside the others.
      if (volumes.length === 1 || !(err instanceof FerryError)) throw err;
      errors.push(err);
      listings.push({ partition: volume.partition, fileSystem: volume.fileSystem, path: args.path!, error: { code: err.code, message: err.message } });
    }
  }
  if (errors.length === listings.length) throw errors[0];
  if (args.json) {
    const one = listings.length === 1 ? { partition: listings[0]!.partition, fileSystem: listings[0]!.fileSystem, path: listings[0]!.path, entries: listings[0]!.entries } : {};
    printJson({ ...head, ...one, listings, read: pf.figures });
    return;
  }
  for (const l of listings) {
    process.stdout.write(`partition ${l.partition} (${l.fileSystem}) ${l.path}\n`);
    if (l.error) {
      process.stdout.write(`  ${l.error.message}\n`);
      continue;
    }
    process.stdout.write(
      table(
        ['MODE', 'UID', 'GID', 'SIZE', 'MODIFIED', 'NAME'],
        l.entries!.map((e) => [e.modeString, String(e.uid), String(e.gid), String(e.size), e.mtime, e.target !== undefined ? `${e.name} -> ${e.target}` : e.name]),
      ),
    );
  }
}

async function entryJson(fs: FileSystem, dir: string, inDir: boolean, e: FileStat): Promise<EntryJson> {
  const full = inDir ? `${dir.replace(/\/+$/, '')}/${e.name}` : dir;
  const out: EntryJson = {
    name: e.name,
    type: e.type,
    size: e.size,
    mode: e.mode,
    modeString: modeString(e),
    uid: e.uid,
    gid: e.gid,
    mtime: new Date(e.mtimeMs).toISOString(),
  };
  if (e.type === 'symlink') out.target = await fs.readLink(full);
  return out;
}

function modeString(e: FileStat): string {
  const t = e.type === 'dir' ? 'd' : e.type === 'symlink' ? 'l' : e.type === 'file' ? '-' : '?';
  let s = t;
  for (let shift = 6; shift >= 0; shift -= 3) {
    const bits = (e.mode >> shift) & 7;
    s += (bits & 4 ? 'r' : '-') + (bits & 2 ? 'w' : '-') + (bits & 1 ? 'x' : '-');
  }
  return s;
}

async function extract(pf: PointFiles, args: Args, head: Head): Promise<void> {
  const volumes = pf.select(args.partition);
  if (volumes.length > 1) {
    throw new FerryError('CLI_USAGE', `the disk has ${volumes.length} partitions with a file system (${volumes.map((v) => v.partition).join(', ')}): name one with --partition N`);
  }
  const volume = volumes[0]!;
  const fs = await pf.fileSystem(volume);
  const result: ExtractResult = await extractFiles(fs, args.extract!, args.to!, { force: args.force });
  if (args.json) {
    printJson({ ...head, partition: volume.partition, fileSystem: fs.kind, extracted: result, read: pf.figures });
  } else {
    const f = pf.figures;
    process.stdout.write(
      `Extracted ${result.path} from partition ${volume.partition} (${fs.kind}) of ${head.vm}/${head.disk} at ${head.restorePoint} to ${result.to}: ` +
        `${result.files} file(s), ${result.dirs} folder(s), ${result.symlinks} link(s), ${humanSize(result.bytesWritten)}; ` +
        `read ${f.blocks} of ${f.diskDataBlocks} data blocks (${humanSize(f.bytes)})\n`,
    );
    for (const s of result.skipped) process.stderr.write(`ferry: skipped ${s.path}: ${s.code}: ${s.reason}\n`);
  }
}
