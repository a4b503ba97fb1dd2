import { createSecureContext, type TlsOptions } from 'node:tls';
import { FerryError } from '../errors.js';
import { NbdServer } from '../nbd-server/nbd-server.js';
import type { NbdExport } from '../nbd-server/nbd-export.js';
import { loadAuth } from '../remote/wire/tls-auth.js';
import type { RestorePoint } from '../repository/repository.js';
import { openPointAccess, type PointAccess } from '../restore-access/point-access.js';
import type { PointReader, PointReaderOptions } from '../restore-access/point-reader.js';
import type { JobRuntime } from '../session/job-runtime.js';
import { OverlayImage } from './overlay-image.js';
import { defaultOverlayDir } from './overlay-dir.js';

export interface PointServerOptions {
  vm: string;
  /** Restore point id, or `latest`. */
  point: string;
  /** Disks to export (default: every disk of the point); each export is named after its disk. */
  disks?: string[];
  /** `unix:PATH` or `HOST:PORT`. */
  listen: string;
  /** Writes go to a copy-on-write overlay per disk (never to the repository). */
  writable?: boolean;
  /**
   * The overlay folder (one disk), or the folder holding one overlay folder per disk (several):
   * default a new folder under `defaultOverlayDir()`. An existing overlay of the same point and
   * disk is opened again with its writes.
   */
  overlay?: string;
  /** Certificate folder of `ferry certs init`: TLS required, clients need a certificate its CA signed. */
  certs?: string;
  reader?: PointReaderOptions;
  log?: (line: string) => void;
}

export interface ServedDisk {
  /** NBD export name (the disk's name). */
  name: string;
  disk: string;
  sizeBytes: number;
  uri: string;
  writable: boolean;
  /** The overlay folder of a writable export. */
  overlay?: string;
  image: PointReader | OverlayImage;
}

export interface PointServer {
  point: RestorePoint;
  /** `unix:PATH` or `HOST:PORT` (the real port when 0 was asked for). */
  address: string;
  tls: boolean;
  disks: ServedDisk[];
  /** Stops listening, ends connections, flushes overlays, closes readers, releases the lock. */
  close(): Promise<void>;
}

/**
 * `ferry serve` and `ferry instant-recover`: the disks of one restore point as NBD exports, read
 * from the repository on demand (`PointReader`), writes in per-disk overlays when writable.
 */
export async function startPointServer(rt: JobRuntime, opts: PointServerOptions): Promise<PointServer> {
  const tls = opts.certs ? await serverTls(opts.certs) : undefined;
  const access = await openPointAccess(rt, { vm: opts.vm, point: opts.point });
  const served: ServedDisk[] = [];
  let server: NbdServer | undefined;
  const closeAll = async (): Promise<void> => {
    await server?.close();
    for (const d of served) await d.image.close().catch((err: Error) => opts.log?.(`closing ${d.disk}: ${err.message}`));
    await access.close();
  };
  try {
    const names = opts.disks?.length ? opts.disks : access.point.disks.map((d) => d.name);
    for (const disk of names) served.push(await serveDisk(rt, access, disk, opts, names.length > 1));
    const exports: NbdExport[] = served.map((d) => ({
      name: d.name,
      description: `${access.point.vm}/${d.disk} at restore point ${access.point.id}${d.writable ? ' (writable overlay)' : ''}`,
      image: d.image,
      writable: d.writable,
    }));
    server = new NbdServer({ exports, tls, log: opts.log });
    const address = await server.listen(opts.listen);
    exports.forEach((e, i) => (served[i]!.uri = server!.uri(e)));
    return { point: access.point, address, tls: Boolean(tls), disks: served, close: closeAll };
  } catch (err) {
    await closeAll().catch(() => undefined);
    throw err;
  }
}

async function serveDisk(rt: JobRuntime, access: PointAccess, disk: string, opts: PointServerOptions, several: boolean): Promise<ServedDisk> {
  const reader = await access.openDisk(disk, opts.reader);
  const base = { name: disk, disk, sizeBytes: reader.size, uri: '' };
  if (!opts.writable) return { ...base, writable: false, image: reader };
  const root = opts.overlay ?? defaultOverlayDir(rt.spec.job, access.point, disk, several);
  const dir = several && opts.overlay ? `${root}/${disk}` : root;
  try {
    const image = await OverlayImage.open(dir, reader, { vm: access.point.vm, disk, point: access.point.id });
    return { ...base, writable: true, overlay: dir, image };
  } catch (err) {
    await reader.close();
    throw err;
  }
}

/** The server's TLS context from a `ferry certs init` folder: its `server` certificate, clients verified against `ca.crt`. */
async function serverTls(dir: string): Promise<TlsOptions> {
  const auth = await loadAuth({ kind: 'certs', dir, role: 'server' });
  const { ca, cert, key } = auth.server;
  try {
    // TLS 1.2 at least, as the NBD spec asks of every implementation (qemu and libnbd speak 1.3 too).
    const options: TlsOptions = { ca, cert, key, minVersion: 'TLSv1.2' };
    createSecureContext(options);
    return options;
  } catch (err) {
    throw new FerryError('CERTS_FAILED', `cannot use the certificates in ${dir}: ${(err as Error).message}`, { file: dir }, { cause: err });
  }
}
