import { FerryError, type DiskHandle, type ProbeResult, type SourceDisk, type Transport, type WritableDisk } from '@ferry/core';
import { parseNbdAddress } from './nbd-address.js';
import { NbdClient, type NbdClientOptions } from './nbd-client.js';
import { NbdDiskHandle } from './nbd-disk-handle.js';
import { NbdRestoreTarget } from './nbd-restore-target.js';
import { exportLabel } from './nbd-errors.js';
import { BASE_ALLOCATION, QEMU_DIRTY_BITMAP_PREFIX } from './nbd-protocol.js';
import { loadTlsCredsDir, type NbdTlsOptions } from './nbd-tls.js';

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
  /** TLS credentials directory for disks with `tls: true` and no `tlsCreds`. Default `$FERRY_NBD_TLS_CREDS`. */
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
   * TLS credentials come from FERRY_NBD_TLS_CREDS (or the transport's options) for `nbds` addresses.
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

  private tlsFor(disk: SourceDisk, nbd: NbdDiskAccess): NbdTlsOptions {
    const dir = nbd.tlsCreds ?? this.options.tlsCreds ?? process.env.FERRY_NBD_TLS_CREDS;
    if (!dir) {
      throw new FerryError(
        'TRANSPORT_UNAVAILABLE',
        `NBD ${exportLabel(nbd.exportName)} at ${nbd.address} needs TLS but no credentials directory is set (disk.nbd.tlsCreds or FERRY_NBD_TLS_CREDS)`,
        { disk: disk.name, host: nbd.address },
      );
    }
    try {
      return loadTlsCredsDir(dir, nbd.tlsHostname);
    } catch (err) {
      throw new FerryError('TRANSPORT_UNAVAILABLE', (err as Error).message, { disk: disk.name, host: nbd.address }, { cause: err });
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
