import { createRequire } from 'node:module';

/** The native `ferry_seek` addon (native/seek.c): lseek(2) with the platform's SEEK_DATA / SEEK_HOLE. */
export interface SeekAddon {
  /**
   * The new offset, or -1 when lseek fails with ENXIO (no data at or after `offset`, or `offset` past
   * the end). Any other failure throws an Error whose `code` is the errno name.
   */
  seek(fd: number, offset: number, whence: number): number;
  /** The platform's values (Linux: 3 and 4; other systems number them differently). */
  readonly SEEK_DATA: number;
  readonly SEEK_HOLE: number;
}

/**
 * The addon built by `node-gyp rebuild` at install time, or undefined where it was not built or the
 * platform has no SEEK_DATA (the addon then exports nothing). Callers must fall back to reporting
 * every byte as data: without lseek there is no honest way to tell a hole from zeros.
 */
export function loadSeekAddon(): SeekAddon | undefined {
  try {
    const addon = createRequire(import.meta.url)('../build/Release/ferry_seek.node') as Partial<SeekAddon>;
    const complete =
      typeof addon.seek === 'function' && typeof addon.SEEK_DATA === 'number' && typeof addon.SEEK_HOLE === 'number';
    return complete ? (addon as SeekAddon) : undefined;
  } catch {
    return undefined;
  }
}
