import { constants } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, stat, symlink, unlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { FerryError, isFerryError } from '../errors.js';
import type { FileStat, FileSystem } from '../disk-formats/file-system.js';
import { splitPath } from '../disk-formats/file-system.js';

export interface ExtractOptions {
  /** Replace existing files and links in the target folder (existing folders are always merged into). */
  force?: boolean;
  /** Give extracted entries the file system's uid/gid (default: when running as root). */
  owners?: boolean;
}

/** An entry that was not extracted, and why (FS_UNSAFE_NAME, DISK_FORMAT_UNSUPPORTED, ...). */
export interface SkippedEntry {
  path: string;
  code: string;
  reason: string;
}

export interface ExtractResult {
  /** The file system path extracted and the local path it was written to. */
  path: string;
  to: string;
  files: number;
  dirs: number;
  symlinks: number;
  /** Files written as hard links to a file extracted before them (the same inode in the file system). */
  hardLinks: number;
  /** Bytes of file content written (holes are left as holes and not counted). */
  bytesWritten: number;
  skipped: SkippedEntry[];
}

/**
 * Copies a file, folder (recursively) or symlink of a file system into `toDir` (created when missing;
 * it may itself be a link to a folder, as the user named it), keeping modes and
 * times (and owners when `owners`). It never writes outside `toDir`: names with `/`, NUL, `.` or `..`
 * and symlinks whose target is absolute or climbs out of `toDir` are skipped as FS_UNSAFE_NAME;
 * existing path components are checked to be real folders (never followed links); files are created
 * with O_EXCL|O_NOFOLLOW. An existing file is RESTORE_TARGET_EXISTS unless `force`.
 */
export async function extractFiles(fs: FileSystem, fsPath: string, toDir: string, opts: ExtractOptions = {}): Promise<ExtractResult> {
  const root = path.resolve(toDir);
  const parts = splitPath(fsPath);
  const top = await fs.stat(fsPath);
  const rootStat = await stat(root).catch(() => undefined);
  if (!rootStat) await mkdir(root, { recursive: true });
  else if (!rootStat.isDirectory()) throw new FerryError('RESTORE_TARGET', `the target ${root} is not a folder`);
  const result: ExtractResult = { path: '/' + parts.join('/'), to: root, files: 0, dirs: 0, symlinks: 0, hardLinks: 0, bytesWritten: 0, skipped: [] };
  const owners = opts.owners ?? process.getuid?.() === 0;
  const ex = new Extractor(fs, root, opts.force ?? false, owners, result);
  if (parts.length === 0) await ex.dirContents('/', root, []);
  else await ex.entry(result.path, top, [parts[parts.length - 1]!]);
  return result;
}

class Extractor {
  /** Local path of each multiply linked file written so far, by its number in the file system. */
  private readonly linked = new Map<number, string>();

  constructor(
    private readonly fs: FileSystem,
    private readonly root: string,
    private readonly force: boolean,
    private readonly owners: boolean,
    private readonly result: ExtractResult,
  ) {}

  /** Extracts `st` (at `fsPath`) to root/rel. */
  async entry(fsPath: string, st: FileStat, rel: string[]): Promise<void> {
    const name = rel[rel.length - 1]!;
    if (!safeName(name)) return this.skip(fsPath, 'FS_UNSAFE_NAME', `the name ${JSON.stringify(name)} is not a safe file name`);
    const local = path.join(this.root, ...rel);
    switch (st.type) {
      case 'dir': {
        await this.makeDir(local);
        await this.dirContents(fsPath, local, rel);
        await this.finish(local, st, false);
        this.result.dirs++;
        return;
      }
      case 'file': {
        await this.clear(local);
        const first = st.links > 1 ? this.linked.get(st.id) : undefined;
        if (first !== undefined) {
          await link(first, local);
          this.result.hardLinks++;
          return;
        }
        await this.writeFile(fsPath, st, local);
        await this.finish(local, st, false);
        if (st.links > 1) this.linked.set(st.id, local);
        this.result.files++;
        return;
      }
      case 'symlink': {
        const target = await this.fs.readLink(fsPath);
        if (!safeLinkTarget(rel, target)) {
          return this.skip(fsPath, 'FS_UNSAFE_NAME', `the link target ${JSON.stringify(target)} is absolute or points outside the target folder`);
        }
        await this.clear(local);
        await symlink(target, local);
        await this.finish(local, st, true);
        this.result.symlinks++;
        return;
      }
      default:
        return this.skip(fsPath, 'DISK_FORMAT_UNSUPPORTED', 'a device, FIFO or socket is not extracted');
    }
  }

  async dirContents(fsPath: string, local: string, rel: string[]): Promise<void> {
    for (const child of await this.fs.list(fsPath)) {
      const childPath = fsPath === '/' ? `/${child.name}` : `${fsPath}/${child.name}`;
      try {
        await this.entry(childPath, child, [...rel, child.name]);
      } catch (err) {
        // A damaged or unsupported entry is reported and skipped; a target that exists stops everything.
        if (isFerryError(err) && (err.code === 'DISK_FORMAT_INVALID' || err.code === 'DISK_FORMAT_UNSUPPORTED')) {
          this.skip(childPath, err.code, err.detail);
        } else throw err;
      }
    }
  }

  private skip(fsPath: string, code: string, reason: string): void {
    this.result.skipped.push({ path: fsPath, code, reason });
  }

  /** A folder at `local`: created, or an existing real folder (never a link to elsewhere). */
  private async makeDir(local: string): Promise<void> {
    const st = await lstat(local).catch(() => undefined);
    if (st?.isDirectory()) return;
    if (st) {
      if (!this.force) throw exists(local);
      await unlink(local);
    }
    await mkdir(local, { mode: 0o700 });
  }

  /** Makes room for a file or link at `local`: refused when something is there, unless --force. */
  private async clear(local: string): Promise<void> {
    const st = await lstat(local).catch(() => undefined);
    if (!st) return;
    if (!this.force || st.isDirectory()) throw exists(local);
    await unlink(local);
  }

  private async writeFile(fsPath: string, st: FileStat, local: string): Promise<void> {
    const fh = await open(local, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      for await (const chunk of this.fs.readFile(fsPath)) {
        const end = Math.min(chunk.data.length, st.size - chunk.offset);
        if (end <= 0) continue;
        await fh.write(chunk.data, 0, end, chunk.offset);
        this.result.bytesWritten += end;
      }
      await fh.truncate(st.size);
    } finally {
      await fh.close();
    }
  }

  private async finish(local: string, st: FileStat, link: boolean): Promise<void> {
    if (this.owners) await lchown(local, st.uid, st.gid);
    if (!link) await chmod(local, st.mode);
    const atime = new Date(st.atimeMs);
    const mtime = new Date(st.mtimeMs);
    if (link) await lutimes(local, atime, mtime);
    else await utimes(local, st.atimeMs / 1000, st.mtimeMs / 1000);
  }
}

function exists(local: string): FerryError {
  return new FerryError('RESTORE_TARGET_EXISTS', `${local} exists already; give --force to replace files and links (folders are merged into)`);
}

function safeName(name: string): boolean {
  return name !== '' && name !== '.' && name !== '..' && !name.includes('/') && !name.includes('\0');
}

/** A relative link target that, resolved from the link's folder, stays inside the extraction root. */
function safeLinkTarget(rel: string[], target: string): boolean {
  if (target === '' || target.startsWith('/') || target.includes('\0')) return false;
  let depth = rel.length - 1;
  for (const part of target.split('/')) {
    if (part === '..') depth--;
    else if (part !== '' && part !== '.') depth++;
    if (depth < 0) return false;
  }
  return true;
}
