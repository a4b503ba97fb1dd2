import type { DiskHandle } from '../contracts/transport.js';
import { FerryError, type ErrorLocation } from '../errors.js';

/**
 * Stamps plugin name, hook, VM and disk (and the offset of a read) on anything a transport handle
 * throws, so an error from a third-party transport says where it came from. Used by the embedded
 * session and by the proxy service alike.
 */
export function guardHandle(h: DiskHandle, plugin: string, where: ErrorLocation): DiskHandle {
  const wrap =
    <A extends unknown[], R>(hook: string, fn: (...a: A) => Promise<R>) =>
    async (...a: A): Promise<R> => {
      try {
        return await fn(...a);
      } catch (err) {
        if (err instanceof FerryError) throw err.at({ ...where, plugin, hook });
        const offset = typeof a[0] === 'number' ? a[0] : undefined;
        throw new FerryError('TRANSPORT_READ_FAILED', (err as Error)?.message ?? String(err), { ...where, plugin, hook, offset }, { cause: err });
      }
    };
  return {
    size: h.size,
    ...(h.fd !== undefined && { fd: h.fd }),
    read: wrap('read', h.read.bind(h)),
    readInto: h.readInto && wrap('readInto', h.readInto.bind(h)),
    blockStatus: h.blockStatus && wrap('blockStatus', h.blockStatus.bind(h)),
    changedBlocks: h.changedBlocks && wrap('changedBlocks', h.changedBlocks.bind(h)),
    close: () => h.close(),
  };
}
