import { randomBytes } from 'node:crypto';
import { FerryError, type ErrorLocation } from '../errors.js';
import { BlockMap } from '../repository/block-map.js';
import type { DamagedPoint, RestorePoint } from '../repository/repository.js';
import { WorkerBlockCodec, workerPlugins } from '../pipe/worker-block-codec.js';
import type { JobRuntime } from './job-runtime.js';
import type { RestoreFigures, RestoreSource, RestoreTarget } from './restore-placement.js';
import type { RestoreOptions } from './restore-session.js';
import { sha256 } from '../util/checksums.js';
import type { WireMessage } from '../remote/wire/index.js';
import { fromHex, type ControlChannel } from '../remote/services/protocol.js';
import { connectRepositoryService, type RemoteSpec } from './remote-backup.js';

/** How long a restore keeps trying to reach the repository service again after its connection dropped. */
export const RESTORE_RESUME_WINDOW_MS = 30_000;

/** A drop the restore resumes after (a cut, a reset, a silent peer), as opposed to an answer. */
export function isDrop(err: unknown): boolean {
  const code = (err as { code?: unknown })?.code;
  if (err instanceof FerryError) return code === 'PIPE_CLOSED' || code === 'PIPE_TIMEOUT';
  return typeof code === 'string' && /^E[A-Z]+$/.test(code);
}

/**
 * `ferry restore` against a repository service: the service streams the block map and every stored
 * block object in order; this process checks CRC-32 and the block id of each against the map (so the
 * check covers the network as well) and hands it to the restore loop to write. A dropped connection
 * is made again and the stream resumes at the first block not yet written; the source ends only
 * when every data block of the map was written.
 */
export class RemoteRestore implements RestoreSource {
  private map?: BlockMap;
  private mapDigest = '';
  private point = '';
  private codec?: WorkerBlockCodec;
  private reconnects = 0;
  private resentBlocks = 0;
  /** Names this restore to the service across connections, so it can count what it sends twice. */
  private readonly restoreId = randomBytes(8).toString('hex');
  private readonly where: ErrorLocation;

  constructor(
    private readonly rt: JobRuntime,
    private readonly remote: RemoteSpec,
    private readonly opts: RestoreOptions,
  ) {
    this.where = { vm: opts.vm, disk: opts.disk };
  }

  async run(target: RestoreTarget): Promise<RestoreFigures> {
    let control: ControlChannel | undefined = await connectRepositoryService(this.remote);
    try {
      for (;;) {
        try {
          await this.stream(control, target);
          break;
        } catch (err) {
          if (!isDrop(err)) throw err;
          await control.close();
          control = undefined;
          control = await this.reconnect(err as Error, target);
          this.reconnects++;
        }
      }
    } finally {
      await control?.close();
    }
    if (!this.map) throw new FerryError('PIPE_PROTOCOL', 'the repository service sent no block map', this.where);
    this.checkComplete(this.map, target);
    return { reconnects: this.reconnects, resentBlocks: this.resentBlocks };
  }

  async close(): Promise<void> {
    await this.codec?.close().catch(() => undefined);
  }

  /**
   * One connection's stream, from the first block not yet written. Blocks are decoded (worker
   * threads) and written as they arrive; the service keeps at most its window of blocks
   * unacknowledged, so memory stays bounded when the target is slow. Blocks that arrived before a
   * drop are still written before the drop is reported.
   */
  private async stream(control: ControlChannel, target: RestoreTarget): Promise<void> {
    let failed: unknown;
    let opening: Promise<void> = Promise.resolve();
    let done = 0;
    const pending = new Set<Promise<void>>();
    const fail = (err: unknown): void => {
      failed ??= err;
      // The service waits for credit that will not come: end the request instead of hanging.
      void control.conn.close('the restore failed').catch(() => undefined);
    };
    const onMessage = (m: WireMessage): void => {
      if (failed) return;
      if (m.type === 'restore.map') {
        opening = this.onMap(m, target);
        opening.catch(fail);
        return;
      }
      if (m.type !== 'restore.block') return;
      const p = opening
        .then(() => this.write(m, target))
        .then(() => {
          // Credit for the service: blocks of this connection written (or already written before).
          if (++done % 4 === 0) void control.conn.send({ type: 'restore.ack', header: { id: m.header?.id, done } }).catch(() => undefined);
        })
        .catch(fail);
      pending.add(p);
      void p.finally(() => pending.delete(p));
    };
    const args = { vm: this.opts.vm, disk: this.opts.disk, point: this.point || this.opts.point, restoreId: this.restoreId, from: this.firstMissing(target) };
    let dropped: unknown;
    await control.request('restore.open', args, { onMessage }).catch((err) => (dropped = err));
    await opening.catch(() => undefined);
    while (pending.size) await Promise.all([...pending]);
    if (failed) throw failed;
    if (dropped) throw dropped;
  }

  /** The first map opens the target; a resumed stream's map must be the same point's. */
  private async onMap(m: WireMessage, target: RestoreTarget): Promise<void> {
    const body = m.body ?? new Uint8Array();
    const point = String(m.header?.point);
    const digest = sha256(body).toString('hex');
    if (this.map) {
      if (point !== this.point || digest !== this.mapDigest) {
        throw new FerryError('REMOTE_RESUME_FAILED', `after reconnecting, the repository service sent the block map of another point (${point})`, { ...this.where, host: this.remote.server });
      }
    } else {
      const map = BlockMap.decode(body, `block map of ${this.opts.vm}/${this.opts.disk} (from ${this.remote.server})`);
      this.map = map;
      this.mapDigest = digest;
      this.point = point;
      const idKey = typeof m.header?.idKey === 'string' ? Buffer.from(m.header.idKey, 'hex') : undefined;
      this.codec = new WorkerBlockCodec(workerPlugins(this.rt.plugins), undefined, idKey);
      await target.open(point, map);
    }
    const resent = Number(m.header?.resent ?? 0);
    if (Number.isInteger(resent) && resent >= 0) this.resentBlocks += resent;
  }

  private async write(m: WireMessage, target: RestoreTarget): Promise<void> {
    const { map, codec } = this;
    if (!map || !codec) throw new FerryError('PIPE_PROTOCOL', 'a block arrived before the block map', this.where);
    const i = Number(m.header?.i);
    const hash = Number.isInteger(i) ? map.get(i) : undefined;
    if (!hash || !hash.equals(fromHex(m.header?.h, 'a block hash'))) {
      throw new FerryError('PIPE_PROTOCOL', `block ${i} does not match the block map`, { ...this.where, offset: i * map.blockSize });
    }
    if (target.written(i)) return;
    const where = { ...this.where, offset: i * map.blockSize };
    const data = await codec.decode(m.body ?? new Uint8Array(), hash, `block ${hash.toString('hex')} (from ${this.remote.server})`).catch((err) => {
      throw err instanceof FerryError ? err.at(where) : err;
    });
    await target.write(i, data);
  }

  /** Where a resumed stream starts: the first data block not written (0 before the map arrived). */
  private firstMissing(target: RestoreTarget): number {
    const map = this.map;
    if (!map) return 0;
    for (let i = 0; i < map.blockCount; i++) if (map.get(i) && !target.written(i)) return i;
    return map.blockCount;
  }

  /** Every data block of the map must have been written: a block the service skipped is an error, never a hole. */
  private checkComplete(map: BlockMap, target: RestoreTarget): void {
    let missing = 0;
    let first = -1;
    for (let i = 0; i < map.blockCount; i++) {
      if (!map.get(i) || target.written(i)) continue;
      missing++;
      if (first < 0) first = i;
    }
    if (missing === 0) return;
    throw new FerryError(
      'RESTORE_INCOMPLETE',
      `the repository service ended the restore without sending ${missing} block(s) of the block map, the first being block ${first}; the target is incomplete`,
      { ...this.where, offset: first * map.blockSize, host: this.remote.server },
    );
  }

  /** Connects again within the resume window (the service may be restarting, the path flapping). */
  private async reconnect(cause: Error, target: RestoreTarget): Promise<ControlChannel> {
    const deadline = Date.now() + RESTORE_RESUME_WINDOW_MS;
    let delay = 100;
    let last = cause;
    for (;;) {
      try {
        return await connectRepositoryService(this.remote);
      } catch (err) {
        if (!isDrop(err) && (err as FerryError).code !== 'PIPE_UNREACHABLE') throw err;
        last = err as Error;
      }
      if (Date.now() + delay > deadline) break;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(2000, delay * 2);
    }
    throw new FerryError(
      'REMOTE_RESUME_FAILED',
      `the connection to the repository service dropped at block ${this.firstMissing(target)} and could not be made again within ${RESTORE_RESUME_WINDOW_MS / 1000} s (${last.message})`,
      { ...this.where, host: this.remote.server },
      { cause: last },
    );
  }
}

/** Restore points of the job's repository service (`ferry list`). */
export async function listRemotePoints(remote: RemoteSpec, vm?: string): Promise<{ location: string; points: RestorePoint[]; damaged: DamagedPoint[] }> {
  const control = await connectRepositoryService(remote);
  try {
    const { points, damaged } = await control.request('points.list', vm === undefined ? {} : { vm });
    return { location: `ferry://${remote.server}`, points, damaged: damaged ?? [] };
  } finally {
    await control.close();
  }
}
