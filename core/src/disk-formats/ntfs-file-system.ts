import { FerryError } from '../errors.js';
import type { DiskReader } from './disk-reader.js';
import type { FileData, FileStat, FileSystem } from './file-system.js';
import { NtfsVolume, type NtfsEntry } from './ntfs.js';

/** MFT records below 16 are NTFS's own metadata files ($MFT, $LogFile, $Bitmap, ...; `FILE_first_user`). */
const FIRST_USER_RECORD = 16;
const READ_ONLY = 0x1;
const CHUNK = 1 << 20;
/** Entries of listed folders kept by path, so reading each file of a big folder does not walk its index again. */
const MAX_CACHED_ENTRIES = 100_000;

/**
 * `NtfsVolume` behind the `FileSystem` interface. NTFS keeps no POSIX modes or owners: files read as
 * 0644 (0444 with the read-only attribute), folders as 0755, owner 0:0, as ntfs-3g shows them without
 * a user mapping. Listings leave out the metadata files in records 0-15 ($MFT, ...), as `ntfsls` does;
 * they can still be looked up by path. Reparse points (links, junctions) read as what they are stored as.
 */
export class NtfsFileSystem implements FileSystem {
  readonly kind = 'ntfs';

  private readonly known = new Map<string, NtfsEntry>();

  private constructor(readonly volume: NtfsVolume) {}

  static async open(read: DiskReader, size: number): Promise<NtfsFileSystem> {
    return new NtfsFileSystem(await NtfsVolume.open(read, size));
  }

  async stat(path: string): Promise<FileStat> {
    return toStat(await this.entry(path));
  }

  async list(path: string): Promise<FileStat[]> {
    const entries = await this.volume.list(path);
    if (this.known.size + entries.length > MAX_CACHED_ENTRIES) this.known.clear();
    for (const e of entries) this.known.set(e.path, e);
    return entries
      .filter((e) => e.record >= FIRST_USER_RECORD)
      .map(toStat)
      .sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async readLink(path: string): Promise<string> {
    throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: ${path} is not a symbolic link (NTFS reparse points are not read as links)`);
  }

  async *readFile(path: string): AsyncGenerator<FileData> {
    const entry = await this.entry(path);
    if (entry.isDirectory) throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: ${entry.path} is a directory, not a file`);
    if (entry.size === 0) return;
    const extents = await this.volume.extents(entry);
    // Resident data (inside the MFT record) has no extents and no allocated clusters.
    const ranges =
      extents.length === 0 && entry.allocatedSize === 0
        ? [{ fileOffset: 0, length: entry.size }]
        : extents.map((x) => ({ fileOffset: x.fileOffset, length: Math.min(x.length, entry.size - x.fileOffset) })).filter((x) => x.length > 0);
    for (const r of ranges) {
      for (let at = 0; at < r.length; at += CHUNK) {
        const offset = r.fileOffset + at;
        const data = await this.volume.readFile(entry, offset, Math.min(CHUNK, r.length - at));
        if (data.length) yield { offset, data };
      }
    }
  }

  private async entry(path: string): Promise<NtfsEntry> {
    return this.known.get(path) ?? (await this.volume.stat(path));
  }
}

function toStat(e: NtfsEntry): FileStat {
  const mode = e.isDirectory ? 0o755 : e.attributes & READ_ONLY ? 0o444 : 0o644;
  return {
    name: e.name === '' ? '/' : e.name,
    type: e.isDirectory ? 'dir' : 'file',
    size: e.size,
    mode,
    uid: 0,
    gid: 0,
    mtimeMs: e.modified.getTime(),
    atimeMs: e.accessed.getTime(),
    ctimeMs: e.changed.getTime(),
    birthtimeMs: e.created.getTime(),
    links: 1,
    id: e.record,
  };
}
