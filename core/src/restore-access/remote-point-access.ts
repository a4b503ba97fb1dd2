import { FerryError } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import type { RestorePoint } from '../repository/repository.js';
import { WorkerBlockCodec } from '../pipe/worker-block-codec.js';
import { hex, type ControlChannel } from '../remote/services/protocol.js';
import type { WireMessage } from '../remote/wire/index.js';
import { connectRepositoryService, type RemoteSpec } from '../session/remote-backup.js';
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
    const codec = new WorkerBlockCodec(rt.plugins.options, undefined, idKey ? Buffer.from(idKey, 'hex') : undefined);
    return new RemotePointAccess(point, control, codec, remote.server);
  } catch (err) {
    await control.close();
    throw err;
  }
}

class RemotePointAccess implements PointAccess {
  private readonly readers = new Set<PointReader>();

  constructor(
    readonly point: RestorePoint,
    private readonly control: ControlChannel,
    private readonly codec: WorkerBlockCodec,
    private readonly server: string,
  ) {}

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
    await Promise.all([...this.readers].map((r) => r.close()));
    await this.control.close();
    await this.codec.close().catch(() => undefined);
  }

  private async fetch(hash: Buffer, where: { vm: string; disk: string; host: string; offset?: number }): Promise<Uint8Array> {
    const h = hex(hash);
    let record: Uint8Array | undefined;
    const onMessage = (m: WireMessage): void => {
      if (m.type === 'restore.block' && m.header?.h === h) record = m.body ?? new Uint8Array();
    };
    await this.control.request('blocks.read', { hashes: [h] }, { onMessage }).catch((err) => {
      throw err instanceof FerryError ? err.at(where) : err;
    });
    if (!record) throw new FerryError('PIPE_PROTOCOL', `the repository service did not send block ${h}`, where);
    return record;
  }
}
