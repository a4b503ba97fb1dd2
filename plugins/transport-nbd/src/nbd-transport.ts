import { FerryError, type DiskHandle, type ProbeResult, type SourceDisk, type Transport, type WritableDisk } from '@ferry/core/plugin';
import { parseNbdAddress } from './nbd-address.js';
import { NbdClient, type NbdClientOptions } from './nbd-client.js';
import { NbdDiskHandle } from './nbd-disk-handle.js';
import { NbdRestoreTarget } from './nbd-restore-target.js';
import { exportLabel } from './nbd-errors.js';
import { BASE_ALLOCATION, QEMU_DIRTY_BITMAP_PREFIX } from './nbd-protocol.js';
import { loadTlsCredsDir, loadTlsFiles, type NbdTlsFiles, type NbdTlsOptions } from './nbd-tls.js';

/** Most connections one disk opens: beyond this a server gains nothing and spends its client slots. */
const MAX_CONNECTIONS = 16;

/**
 * `disk.nbd` as a source host describes it, plus the optional keys this transport reads for TLS.
 * The core's `SourceDisk.nbd` names `address`, `exportName`, `bitmap`, `tls`; the extras travel along
 * unchanged because the object is the host's own.
 */
export type NbdDiskAccess = NonNullable<SourceDisk['nbd']> & {
  /** Directory with `ca-cert.pem` and optionally `client-cert.pem` + `client-key.pem` (qemu layout). */
  tlsCreds?: string;
  /** Name the server certificate must carry; default the TCP host, `localhost` on a unix socket. */
  tlsHostname?: string;
  /** Connections to open for reads; overrides the transport's `connections`. */
  connections?: number;
};

export interface NbdTransportOptions {
  /**
   * TLS credentials for disks with `tls: true` and no `tlsCreds` of their own, and for `nbds://`
   * restore targets: the job's `transport.tls` (see `NBD_CONFIG_SCHEMA`).
   */
  tls?: NbdTlsFiles;
  /**
   * A credentials directory, for programs that build the transport themselves; `tls` wins.
   * Without either, the deprecated environment variable FERRY_NBD_TLS_CREDS is read.
   */
  tlsCreds?: string;
  handshakeTimeoutMs?: number;
  replyTimeoutMs?: number;
  maxInFlight?: number;
  /**
   * Connections per disk (default 1). Extra connections carry reads only and are opened when the
   * server allows it (NBD_FLAG_CAN_MULTI_CONN or a read-only export); one that fails is left out.
   */
  connections?: number;
}

/**
 * NBD transport: the backup proxy reads the snapshot from the host's NBD export (`disk.nbd`).
 * Holes come from `base:allocation`, changed blocks from `qemu:dirty-bitmap:<disk.nbd.bitmap>`.
 */
/**
 * The keys `transport: { name: nbd, ... }` takes in a job; the core validates them with the job
 * (errors at file:line, e.g. `transport.tls.ca`) and resolves the paths against the job's folder.
 */
export const NBD_CONFIG_SCHEMA = {
  type: 'object',
  properties: {
    tls: {
      type: 'object',
      additionalProperties: false,
      anyOf: [{ required: ['ca'] }, { required: ['dir'] }],
      dependencies: { cert: ['key'], key: ['cert'] },
      properties: {
        dir: { type: 'string', minLength: 1, ferryPath: 'directory' },
        ca: { type: 'string', minLength: 1, ferryPath: 'file' },
        cert: { type: 'string', minLength: 1, ferryPath: 'file' },
        key: { type: 'string', minLength: 1, ferryPath: 'file' },
        hostname: { type: 'string', minLength: 1 },
      },
    },
    connections: { type: 'integer', minimum: 1, maximum: MAX_CONNECTIONS },
    handshakeTimeoutMs: { type: 'integer', minimum: 100, maximum: 600_000 },
    replyTimeoutMs: { type: 'integer', minimum: 100, maximum: 3_600_000 },
  },
};

export class NbdTransport implements Transport {
  constructor(private readonly options: NbdTransportOptions = {}) {}

  /** Connects and negotiates the export: whatever would make `open` fail is the reason it cannot. */
  async probe(disk: SourceDisk): Promise<ProbeResult> {
    if (!disk.nbd) return { ok: false, reason: 'the disk has no NBD export (disk.nbd) on its source host' };
    let handle: DiskHandle;
    try {
      handle = await this.open(disk);
    } catch (err) {
      if (err instanceof FerryError) return { ok: false, reason: err.detail };
      throw err;
    }
    await handle.close();
    const nbd = disk.nbd as NbdDiskAccess;
    const extras = [`${handle.size} bytes`, nbd.tls ? 'TLS' : '', nbd.bitmap ? `dirty bitmap ${nbd.bitmap}` : ''].filter(Boolean);
    return { ok: true, reason: `NBD ${exportLabel(nbd.exportName)} at ${nbd.address} answers (${extras.join(', ')})` };
  }

  async open(disk: SourceDisk): Promise<DiskHandle> {
    const nbd = disk.nbd as NbdDiskAccess | undefined;
    if (!nbd) throw new FerryError('TRANSPORT_UNAVAILABLE', 'the disk has no NBD export (disk.nbd) on its source host', { disk: disk.name });
    const bitmapContext = nbd.bitmap ? QEMU_DIRTY_BITMAP_PREFIX + nbd.bitmap : undefined;
    const options: NbdClientOptions = {
      address: nbd.address,
      exportName: nbd.exportName,
      tls: nbd.tls ? this.tlsFor(disk, nbd) : undefined,
      handshakeTimeoutMs: this.options.handshakeTimeoutMs,
      replyTimeoutMs: this.options.replyTimeoutMs,
      maxInFlight: this.options.maxInFlight,
    };
    const metaContexts = bitmapContext ? [BASE_ALLOCATION, bitmapContext] : [BASE_ALLOCATION];
    const client = await NbdClient.connect({ ...options, metaContexts }).catch((err: unknown) => {
      throw err instanceof FerryError ? err.at({ disk: disk.name }) : err;
    });
    if (bitmapContext && !client.metaContexts.has(bitmapContext)) {
      await client.close().catch(() => undefined);
      throw missingBitmap(disk, nbd, client);
    }
    const readers = await this.extraReaders(client, options, nbd.connections ?? this.options.connections ?? 1);
    return new NbdDiskHandle(client, disk.name, bitmapContext, readers);
  }

  /**
   * A restore target: any NBD address form (`nbd://`, `nbds://`, `nbd+unix://`, `unix:`, `tcp:`).
   * TLS credentials come from the transport's options (the job's `transport.tls`) for `nbds` addresses.
   */
  async openTarget(address: string): Promise<WritableDisk | undefined> {
    let access: NbdDiskAccess;
    try {
      const endpoint = parseNbdAddress(address);
      access = { address, exportName: endpoint.exportName ?? '', tls: endpoint.tls };
    } catch {
      return undefined;
    }
    const tls = access.tls;
    const client = await NbdClient.connect({
      address,
      tls: tls ? this.tlsFor({ name: address }, access) : undefined,
      handshakeTimeoutMs: this.options.handshakeTimeoutMs,
      replyTimeoutMs: this.options.replyTimeoutMs,
      maxInFlight: this.options.maxInFlight,
    }).catch((err: unknown) => {
      throw err instanceof FerryError ? new FerryError('RESTORE_TARGET', err.detail, err.where, { cause: err }) : err;
    });
    if (client.readOnly) {
      await client.close().catch(() => undefined);
      throw new FerryError('RESTORE_TARGET', `NBD ${exportLabel(client.exportName)} at ${address} is read-only`, { host: address });
    }
    return new NbdRestoreTarget(client);
  }

  /** Read-only connections beyond the first, when asked for and the server shares one view among them. */
  private async extraReaders(first: NbdClient, options: NbdClientOptions, connections: number): Promise<NbdClient[]> {
    const extra = Math.min(Math.max(0, Math.floor(connections) - 1), MAX_CONNECTIONS - 1);
    if (!extra || !(first.canMultiConn || first.readOnly)) return [];
    const opened = await Promise.allSettled(Array.from({ length: extra }, () => NbdClient.connect(options)));
    const readers: NbdClient[] = [];
    for (const r of opened) {
      if (r.status !== 'fulfilled') continue;
      if (r.value.size === first.size) readers.push(r.value);
      else await r.value.close().catch(() => undefined); // another export answered: not a reader of this disk
    }
    return readers;
  }

  /**
   * The disk's own directory (a source host's `disk.nbd.tlsCreds`), else the job's `transport.tls`,
   * else `tlsCreds`, else the deprecated FERRY_NBD_TLS_CREDS.
   */
  private tlsFor(disk: SourceDisk, nbd: NbdDiskAccess): NbdTlsOptions {
    const where = { disk: disk.name, host: nbd.address };
    const dir = this.options.tlsCreds ?? process.env.FERRY_NBD_TLS_CREDS;
    const files: NbdTlsFiles | undefined = nbd.tlsCreds ? { dir: nbd.tlsCreds } : (this.options.tls ?? (dir ? { dir } : undefined));
    if (!files) {
      throw new FerryError(
        'TRANSPORT_UNAVAILABLE',
        `NBD ${exportLabel(nbd.exportName)} at ${nbd.address} needs TLS but no credentials are set ` +
          '(transport: { name: nbd, tls: { ca: FILE } } in the job, disk.nbd.tlsCreds, or the deprecated FERRY_NBD_TLS_CREDS)',
        where,
      );
    }
    try {
      const tls = loadTlsFiles(files);
      return { ...tls, hostname: nbd.tlsHostname ?? tls.hostname };
    } catch (err) {
      throw new FerryError('TRANSPORT_UNAVAILABLE', (err as Error).message, where, { cause: err });
    }
  }
}

/** Never a silent incremental: a named bitmap the server does not export is an error, not "no changes". */
function missingBitmap(disk: SourceDisk, nbd: NbdDiskAccess, client: NbdClient): FerryError {
  const why = client.metaContextRefusal
    ? `the server refused meta contexts (${client.metaContextRefusal})`
    : client.structuredReplies
      ? 'the bitmap is missing or not exported with this export (qemu-nbd -B / block-export-add bitmaps)'
      : 'the server does not offer structured replies, which block status needs';
  return new FerryError(
    'TRANSPORT_READ_FAILED',
    `dirty bitmap ${nbd.bitmap} is not available on NBD ${exportLabel(nbd.exportName)} at ${nbd.address}: ` +
      `the server did not agree to meta context ${QEMU_DIRTY_BITMAP_PREFIX}${nbd.bitmap}; ${why}`,
    { disk: disk.name, host: nbd.address },
  );
}
