import { FerryError } from '../errors.js';

import type { DiskReader } from './disk-reader.js';

/** The readers in this folder fetch through a `DiskReader`, so a caller that counts its calls knows what was read. */
export type ByteReader = DiskReader;

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
 * Every method throws FerryError DISK_PATH_NOT_FOUND for a path that does not exist or has the wrong type,
 * DISK_FORMAT_INVALID for malformed structures and DISK_FORMAT_UNSUPPORTED for features the reader does not handle.
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
  if (parts.includes('..')) throw new FerryError('DISK_PATH_NOT_FOUND', `path ${path} contains '..': paths inside a file system are absolute`);
  return parts;
}

export function joinPath(parts: string[]): string {
  return '/' + parts.join('/');
}
