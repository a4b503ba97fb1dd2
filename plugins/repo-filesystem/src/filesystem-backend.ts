import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { constants as fsc, promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError, type ObjectWriter, type RepositoryBackend, type StorageProtection } from '@ferry/core/plugin';

const KEY = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
/** Files `getRange` keeps open at most. */
const MAX_OPEN = 32;
/** Temporary files live here until renamed into place; never listed as keys. */
export const TMP_DIR = 'tmp';
/** Where the filesystem backend records a key's retain-until date (the mutable prefix). */
function retentionKey(key: string): string {
  return `mutable/retention/${key}`;
}

/** Files per `chattr` run. */
const CHATTR_BATCH = 256;

/**
 * A repository in a folder. Every object is one file named by its key. `put` writes a temporary file
 * in `tmp/`, fsyncs it, renames it into place and fsyncs the folder, so a crash leaves either the
 * whole object or none (only stray temporary files, which nothing references); `putIfAbsent` links
 * the temporary file instead of renaming it, which fails when the key exists.
 */
export class FilesystemBackend implements RepositoryBackend {
  private readonly syncedDirs = new Set<string>();
  /** Open files for `getRange`, least recently used first. */
  private readonly open = new Map<string, Promise<fs.FileHandle>>();
  /** Whether `chattr +i` works here: unknown until tried; once it fails, not tried again. */
  private immutableAttr: { ok: boolean; note?: string } | undefined;

  constructor(readonly root: string) {}

  get location(): string {
    return this.root;
  }

  async get(key: string): Promise<Uint8Array> {
    try {
      return await fs.readFile(this.file(key));
    } catch (err) {
      throw this.ioError(err, key, 'read');
    }
  }

  /**
   * Reads a slice through a small cache of open files: a restore reads thousands of blocks out of a
   * few packs. Safe because objects read by range (packs) are immutable and named by their content.
   */
  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    const buf = Buffer.allocUnsafe(length);
    await this.getRangeInto(key, offset, buf);
    return buf;
  }

  /** `getRange` into the caller's buffer (`into.length` bytes), through the same open files. */
  async getRangeInto(key: string, offset: number, into: Uint8Array): Promise<void> {
    try {
      const fh = await this.openCached(key);
      const { bytesRead } = await fh.read(into, 0, into.length, offset);
      if (bytesRead !== into.length) {
        throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + into.length} bytes`, { object: key });
      }
    } catch (err) {
      throw this.ioError(err, key, 'read');
    }
  }

  /** Every object is the file named by its key (a restore's threads read pack ranges from it). */
  localFile(key: string): string {
    return this.file(key);
  }

  async close(): Promise<void> {
    const handles = [...this.open.values()];
    this.open.clear();
    await Promise.all(handles.map(async (h) => (await h.catch(() => undefined))?.close()));
  }

  private openCached(key: string): Promise<fs.FileHandle> {
    let h = this.open.get(key);
    if (h) {
      this.open.delete(key); // re-insert: most recently used last
      this.open.set(key, h);
      return h;
    }
    h = fs.open(this.file(key), 'r');
    h.catch(() => this.open.delete(key));
    this.open.set(key, h);
    if (this.open.size > MAX_OPEN) {
      const [oldest, p] = this.open.entries().next().value as [string, Promise<fs.FileHandle>];
      this.open.delete(oldest);
      void p.then((x) => x.close()).catch(() => undefined);
    }
    return h;
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const target = this.file(key);
    const tmp = await this.writeTemporary(key, data);
    try {
      await this.ensureDir(path.dirname(target));
      await fs.rename(tmp, target);
      await syncDir(path.dirname(target));
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw this.ioError(err, key, 'write');
    }
  }

  /** Create-only (`linkIfAbsent`). */
  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    return this.linkIfAbsent(await this.writeTemporary(key, data), key);
  }

  /**
   * A temporary file in `tmp/` written as the bytes come (positional writes); `commitIfAbsent`
   * fsyncs it and links it under its key exactly as `putIfAbsent` does. A pack then goes to the page
   * cache straight from the caller's block memory, without being assembled in a buffer first.
   */
  async beginObject(): Promise<ObjectWriter> {
    const tmpDir = path.join(this.root, TMP_DIR);
    const tmp = path.join(tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}`);
    let fh: fs.FileHandle;
    try {
      await this.ensureDir(tmpDir);
      fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
    } catch (err) {
      throw this.ioError(err, TMP_DIR, 'write');
    }
    let open = true;
    const close = async (): Promise<void> => {
      if (!open) return;
      open = false;
      await fh.close();
    };
    return {
      write: async (data, offset) => {
        try {
          let done = 0;
          while (done < data.length) done += (await fh.write(data, done, data.length - done, offset + done)).bytesWritten;
        } catch (err) {
          throw this.ioError(err, TMP_DIR, 'write');
        }
      },
      commitIfAbsent: async (key) => {
        try {
          await fh.sync();
          await close();
        } catch (err) {
          await close().catch(() => undefined);
          await fs.rm(tmp, { force: true }).catch(() => undefined);
          throw this.ioError(err, key, 'write');
        }
        return this.linkIfAbsent(tmp, key);
      },
      abort: async () => {
        await close().catch(() => undefined);
        await fs.rm(tmp, { force: true }).catch(() => undefined);
      },
    };
  }

  /**
   * Create-only: the finished, fsynced temporary file is hard-linked under the key. `link()` fails
   * with EEXIST when the key exists, atomically, so of two processes putting one key exactly one
   * wins and the other changes nothing. The temporary name is removed either way.
   */
  private async linkIfAbsent(tmp: string, key: string): Promise<boolean> {
    const target = this.file(key);
    try {
      await this.ensureDir(path.dirname(target));
      try {
        await fs.link(tmp, target);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === 'EEXIST') return false;
        if (code === 'EPERM' || code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
          throw new FerryError(
            'REPO_IO',
            `cannot write ${key} in ${this.root}: the filesystem does not support hard links (${code}), which create-only writes need`,
            { object: key },
            { cause: err },
          );
        }
        throw err;
      }
      await syncDir(path.dirname(target));
      return true;
    } catch (err) {
      throw this.ioError(err, key, 'write');
    } finally {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
    }
  }

  /** Writes `data` to a new file in `tmp/` and fsyncs it; returns its path. */
  private async writeTemporary(key: string, data: Uint8Array): Promise<string> {
    const tmpDir = path.join(this.root, TMP_DIR);
    const tmp = path.join(tmpDir, `${process.pid}-${randomBytes(8).toString('hex')}`);
    try {
      await this.ensureDir(tmpDir);
      const fh = await fs.open(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o644);
      try {
        await fh.writeFile(data);
        await fh.sync();
      } finally {
        await fh.close();
      }
      return tmp;
    } catch (err) {
      await fs.rm(tmp, { force: true }).catch(() => undefined);
      throw this.ioError(err, key, 'write');
    }
  }

  async has(key: string): Promise<boolean> {
    try {
      await fs.access(this.file(key));
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
      throw this.ioError(err, key, 'check');
    }
  }

  async *list(prefix: string): AsyncIterable<string> {
    // Walk from the deepest folder the prefix names completely, then filter by the full prefix.
    const slash = prefix.lastIndexOf('/');
    const base = slash < 0 ? '' : prefix.slice(0, slash);
    for await (const key of this.walk(base)) if (key.startsWith(prefix)) yield key;
  }

  /** Removes the file and fsyncs its folder, so the delete survives a crash. */
  async delete(key: string): Promise<void> {
    const file = this.file(key);
    const until = await this.retainedUntil(key);
    if (until && until.getTime() > Date.now()) {
      throw new FerryError('REPO_IMMUTABLE', `${key} is retained until ${until.toISOString()} and cannot be deleted before then`, { object: key });
    }
    if (until) await this.unprotect([key]);
    try {
      const existed = await fs.unlink(file).then(
        () => true,
        (err: NodeJS.ErrnoException) => {
          if (err.code === 'ENOENT') return false;
          throw err;
        },
      );
      if (existed) await syncDir(path.dirname(file));
      if (until) await fs.unlink(this.file(retentionKey(key))).catch(() => undefined);
    } catch (err) {
      throw this.ioError(err, key, 'delete');
    }
  }

  /**
   * Format 2 retain-until dates: read-only mode and the immutable attribute as `protect` sets them
   * (what the filesystem enforces: the attribute stops deletes and writes by everyone, root
   * included, where it can be set), and the date recorded in `mutable/retention/<key>`, which
   * `delete` consults: it refuses a key before its date and lifts the attribute only after it. A
   * later date replaces an earlier one; an earlier one changes nothing.
   */
  async retain(keys: string[], until: Date): Promise<StorageProtection> {
    for (const key of keys) {
      const had = await this.retainedUntil(key);
      if (had && had.getTime() >= until.getTime()) continue;
      await this.put(retentionKey(key), Buffer.from(until.toISOString() + '\n'));
    }
    return this.protect(keys);
  }

  async retainedUntil(key: string): Promise<Date | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file(retentionKey(key)), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw this.ioError(err, retentionKey(key), 'read');
    }
    const t = Date.parse(text.trim());
    // An unreadable record keeps the object: never lift protection on a date that cannot be read.
    return new Date(Number.isNaN(t) ? 8.64e15 : t);
  }

  /**
   * Removes files in `tmp/` older than `olderThanMs`: puts a killed process never finished. Younger
   * ones may belong to a put in flight and stay.
   */
  async removeStaleTemporaries(olderThanMs: number): Promise<number> {
    const dir = path.join(this.root, TMP_DIR);
    let removed = 0;
    for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
      const file = path.join(dir, name);
      const st = await fs.stat(file).catch(() => undefined);
      if (!st?.isFile() || Date.now() - st.mtimeMs < olderThanMs) continue;
      await fs.rm(file, { force: true });
      removed++;
    }
    return removed;
  }

  /**
   * Immutability: read-only mode (0444), then the immutable attribute (`chattr +i`, the
   * FS_IOC_SETFLAGS ioctl), which needs CAP_LINUX_IMMUTABLE and a filesystem that has it (ext2/3/4,
   * xfs, btrfs; not tmpfs or most network filesystems). Mode bits alone do not stop deletion (that
   * is the folder's permission) and do not stop root; the attribute stops everyone, root included,
   * until it is lifted. Missing support or privileges are reported, never an error.
   */
  async protect(keys: string[]): Promise<StorageProtection> {
    const files = keys.map((k) => this.file(k));
    let readOnly = true;
    for (const f of files) await fs.chmod(f, 0o444).catch(() => (readOnly = false));
    if (this.immutableAttr?.ok !== false) {
      for (let i = 0; i < files.length; i += CHATTR_BATCH) {
        const err = await chattr('+i', files.slice(i, i + CHATTR_BATCH));
        this.immutableAttr = err ? { ok: false, note: `cannot set the immutable attribute (chattr +i) in ${this.root}: ${err}` } : { ok: true };
        if (err) break;
      }
    }
    const immutable = this.immutableAttr?.ok === true;
    return { readOnly, immutable, ...(!immutable && { note: this.immutableAttr?.note ?? 'the immutable attribute was not tried' }) };
  }

  /** Lifts the immutable attribute (when it may have been set) and the read-only mode. */
  async unprotect(keys: string[]): Promise<void> {
    const files: string[] = [];
    for (const k of keys) {
      const f = this.file(k);
      if (await fs.access(f).then(() => true, () => false)) files.push(f);
    }
    if (files.length === 0) return;
    // Another process may have set the attribute even when this one cannot: try unless chattr is absent.
    if (this.immutableAttr?.note?.includes('ENOENT') !== true) {
      for (let i = 0; i < files.length; i += CHATTR_BATCH) await chattr('-i', files.slice(i, i + CHATTR_BATCH));
    }
    for (const f of files) await fs.chmod(f, 0o644).catch(() => undefined);
  }

  private async *walk(rel: string): AsyncIterable<string> {
    let entries: import('node:fs').Dirent[];
    try {
      entries = await fs.readdir(path.join(this.root, rel), { withFileTypes: true });
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return;
      throw this.ioError(err, rel || '.', 'list');
    }
    entries.sort((a, b) => (a.name < b.name ? -1 : 1));
    for (const e of entries) {
      const key = rel ? `${rel}/${e.name}` : e.name;
      if (key === TMP_DIR) continue;
      if (e.isDirectory()) yield* this.walk(key);
      else if (e.isFile()) yield key;
    }
  }

  private file(key: string): string {
    if (!KEY.test(key) || key.split('/').some((s) => s === '.' || s === '..')) {
      throw new FerryError('INTERNAL', `invalid repository key "${key}"`, { object: key });
    }
    return path.join(this.root, ...key.split('/'));
  }

  /** mkdir -p, and fsync the parent of every folder created so the new entries survive a crash. */
  private async ensureDir(dir: string): Promise<void> {
    if (this.syncedDirs.has(dir)) return;
    const created = await fs.mkdir(dir, { recursive: true });
    if (created !== undefined) {
      for (let d = dir; d.length >= created.length; d = path.dirname(d)) await syncDir(path.dirname(d));
    }
    this.syncedDirs.add(dir);
  }

  private ioError(err: unknown, key: string, op: string): FerryError {
    if (err instanceof FerryError) return err;
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'ENOENT' && op !== 'write') {
      return new FerryError('REPO_OBJECT_NOT_FOUND', `object ${key} not found in ${this.root}`, { object: key });
    }
    const hint = e.code === 'ENOSPC' ? ' (the repository disk is full)' : e.code === 'EROFS' ? ' (read-only filesystem)' : '';
    return new FerryError('REPO_IO', `cannot ${op} ${key} in ${this.root}: ${e.code ?? e.message}${hint}`, { object: key }, { cause: err });
  }
}

/** Runs chattr on files; resolves to why it failed, or undefined. Bounded by a timeout. */
function chattr(flag: '+i' | '-i', files: string[]): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile('chattr', [flag, '--', ...files], { timeout: 30_000 }, (err, _out, stderr) => {
      if (!err) return resolve(undefined);
      const code = (err as NodeJS.ErrnoException).code;
      resolve(code === 'ENOENT' ? 'chattr is not installed (ENOENT)' : (String(stderr).trim().split('\n')[0] || err.message));
    });
  });
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
