import { FerryError } from '../errors.js';

/**
 * Reads `length` bytes at `offset` of a disk or partition. It may return fewer bytes only at the end
 * of the device. Every reader in this folder fetches through one, so a caller that counts the calls
 * knows exactly what was read.
 */
export type ByteReader = (offset: number, length: number) => Promise<Uint8Array>;

export type FileType = 'file' | 'dir' | 'symlink' | 'other';

/** What a file system says about one file, folder or link. Times are milliseconds since the epoch (fractions keep nanoseconds). */
export interface FileStat {
  name: string;
  type: FileType;
  /** Bytes of content (for a symlink: of its target text). */
  size: number;
  /** Permission bits and setuid/setgid/sticky (mode & 0o7777); NTFS readers give 0o644 / 0o755. */
  mode: number;
  uid: number;
  gid: number;
  mtimeMs: number;
  atimeMs: number;
  ctimeMs: number;
  birthtimeMs?: number;
  links: number;
  /** The file system's own number for it (ext4 inode, NTFS MFT record). */
  id: number;
}

/** A piece of a file's content; ranges not yielded are holes and read as zeros. */
export interface FileData {
  offset: number;
  data: Uint8Array;
}

/**
 * A read-only file system inside a disk image. Paths are absolute with `/` separators; `/` is the root.
 * Every method throws FerryError FS_NOT_FOUND for a path that does not exist or has the wrong type,
 * FS_CORRUPT for malformed structures and FS_UNSUPPORTED for features the reader does not handle.
 */
export interface FileSystem {
  readonly kind: 'ext4' | 'ntfs';
  stat(path: string): Promise<FileStat>;
  /** The entries of a folder (without `.` and `..`), sorted by name. */
  list(path: string): Promise<FileStat[]>;
  readLink(path: string): Promise<string>;
  /** The content of a regular file in ascending offsets, holes left out. */
  readFile(path: string): AsyncIterable<FileData>;
}

/** The components of an absolute path; `.` is dropped and `..` refused (paths are never resolved upwards). */
export function splitPath(path: string): string[] {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw new FerryError('CLI_USAGE', `path ${path} contains '..'`);
  return parts;
}

export function joinPath(parts: string[]): string {
  return '/' + parts.join('/');
}

/** A reader over the window [start, start + size) of another reader (a partition of a disk). */
export function sliceReader(read: ByteReader, start: number, size: number): ByteReader {
  return async (offset, length) => {
    if (offset >= size) return new Uint8Array(0);
    return read(start + offset, Math.min(length, size - offset));
  };
}
