import { FerryError } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import type { RestorePoint } from '../repository/repository.js';
import { WorkerBlockCodec, workerPlugins } from '../pipe/worker-block-codec.js';
import { hex, type ControlChannel } from '../remote/services/protocol.js';
import type { WireMessage } from '../remote/wire/index.js';
import { connectRepositoryService, type RemoteSpec } from '../session/remote-backup.js';
import { isDrop, RESTORE_RESUME_WINDOW_MS } from '../session/remote-restore.js';
import type { JobRuntime } from '../session/job-runtime.js';
import { sha256 } from '../util/checksums.js';
import { pointDisk, type PointAccess, type PointSelection } from './point-access.js';
import { PointReader, type PointReaderOptions } from './point-reader.js';

/**
 * A restore point of the job's repository service read at random (`point.open`, `point.map`,
 * `blocks.read` on one control connection, `docs/architecture.md`): the service sends stored block
 * objects as they are, this process checks CRC-32 and block id of each (so the check covers the
 * network too) and decodes them on its worker threads. The block map is checked against the SHA-256
 * the point's manifest names.
 */
export async function openRemotePointAccess(rt: JobRuntime, remote: RemoteSpec, sel: PointSelection): Promise<PointAccess> {
  const control = await connectRepositoryService(remote);
  try {
    const { point, idKey } = await control.request('point.open', { vm: sel.vm, point: sel.point });
    const codec = new WorkerBlockCodec(workerPlugins(rt.plugins), undefined, idKey ? Buffer.from(idKey, 'hex') : undefined);
    return new RemotePointAccess(point, control, codec, remote);
  } catch (err) {
    await control.close();
    throw err;
  }
}

class RemotePointAccess implements PointAccess {
  private readonly readers = new Set<PointReader>();
  private readonly server: string;
  /** The connection being made again after a drop: every read waits for the same one. */
  private reconnecting?: Promise<ControlChannel>;
  private closed = false;

  constructor(
    readonly point: RestorePoint,
    private control: ControlChannel,
    private readonly codec: WorkerBlockCodec,
    private readonly remote: RemoteSpec,
  ) {
    this.server = remote.server;
  }

  async openDisk(diskName: string, opts?: PointReaderOptions): Promise<PointReader> {
    const disk = pointDisk(this.point, diskName);
    const where = { vm: this.point.vm, disk: diskName, host: this.server };
    let body: Uint8Array | undefined;
    await this.control.request('point.map', { vm: this.point.vm, point: this.point.id, disk: diskName }, { onMessage: (m) => m.type === 'restore.map' && (body = m.body) });
    if (!body) throw new FerryError('PIPE_PROTOCOL', 'the repository service sent no block map', where);
    if (sha256(body).toString('hex') !== disk.mapSha256) throw new FerryError('REPO_CORRUPT_OBJECT', 'block map does not match the SHA-256 in its restore point', { ...where, object: disk.map });
    const map = BlockMap.decode(body, `${disk.map} (from ${this.server})`);
    const reader = new PointReader(
      { vm: this.point.vm, disk: diskName, id: this.point.id },
      map,
      {
        read: async (hash, at) => {
          const record = await this.fetch(hash, { ...where, ...at });
          return this.codec.decode(record, hash, `block ${hex(hash)} (from ${this.server})`).catch((err) => {
            throw err instanceof FerryError ? err.at({ ...where, ...at }) : err;
          });
        },
        close: async () => void this.readers.delete(reader),
      },
      opts,
    );
    this.readers.add(reader);
    return reader;
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.readers].map((r) => r.close()));
    await this.reconnecting?.catch(() => undefined);
    await this.control.close();
    await this.codec.close().catch(() => undefined);
  }

  /**
   * One stored block object. After a dropped connection (a restarting service, a flapping path) the
   * connection is made again within `RESTORE_RESUME_WINDOW_MS`, the same point is opened again and
   * the read repeated; an export keeps serving across the drop, its readers only wait.
   */
  private async fetch(hash: Buffer, where: { vm: string; disk: string; host: string; offset?: number }): Promise<Uint8Array> {
    const h = hex(hash);
    let record: Uint8Array | undefined;
    const onMessage = (m: WireMessage): void => {
      if (m.type === 'restore.block' && m.header?.h === h) record = m.body ?? new Uint8Array();
    };
    for (let attempt = 0; ; attempt++) {
      const control = this.control;
      try {
        await control.request('blocks.read', { hashes: [h] }, { onMessage });
        break;
      } catch (err) {
        if (this.closed || attempt >= 2 || !isDrop(err)) throw err instanceof FerryError ? err.at(where) : err;
        await this.reconnect(control, err as Error, where);
      }
    }
    if (!record) throw new FerryError('PIPE_PROTOCOL', `the repository service did not send block ${h}`, where);
    return record;
  }

  private async reconnect(dropped: ControlChannel, cause: Error, where: { vm: string; disk: string; host: string }): Promise<void> {
    if (this.control !== dropped) return; // another read made it again already
    this.reconnecting ??= this.connectAgain(cause, where).finally(() => (this.reconnecting = undefined));
    const fresh = await this.reconnecting;
    if (this.control === dropped) {
      this.control = fresh;
      void dropped.close().catch(() => undefined);
    }
  }

  private async connectAgain(cause: Error, where: { vm: string; disk: string; host: string }): Promise<ControlChannel> {
    const deadline = Date.now() + RESTORE_RESUME_WINDOW_MS;
    let last = cause;
    for (let delay = 100; Date.now() + delay <= deadline; delay = Math.min(2000, delay * 2)) {
      await new Promise((r) => setTimeout(r, delay));
      try {
        const c = await connectRepositoryService(this.remote);
        try {
          const { point } = await c.request('point.open', { vm: this.point.vm, point: this.point.id });
          if (point.id !== this.point.id) throw new FerryError('REMOTE_RESUME_FAILED', `the repository service opened point ${point.id}, not ${this.point.id}`, where);
          return c;
        } catch (err) {
          await c.close();
          throw err;
        }
      } catch (err) {
        if (!isDrop(err) && (err as FerryError).code !== 'PIPE_UNREACHABLE') throw err;
        last = err as Error;
      }
    }
    throw new FerryError('REMOTE_RESUME_FAILED', `the connection to the repository service dropped and could not be made again within ${RESTORE_RESUME_WINDOW_MS / 1000} s (${last.message})`, where, { cause: last });
  }
}
