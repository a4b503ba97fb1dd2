import { FerryError } from '../../errors.js';
import { BlockMap } from '../../repository/block-map.js';
import type { DamagedPoint, RestorePoint } from '../../repository/repository.js';
import { WorkerBlockCodec } from '../../pipe/worker-block-codec.js';
import type { JobRuntime } from '../../session/job-runtime.js';
import type { RestoreOptions, RestoreReport } from '../../session/restore-session.js';
import { openRestoreSink, withTargetState, type RestoreSink } from '../../session/restore-sink.js';
import type { WireMessage } from '../wire/index.js';
import { fromHex } from './protocol.js';
import { connectRepositoryService, type RemoteSpec } from './remote-backup.js';

/**
 * `ferry restore` against a repository service: the service streams the block map and every stored
 * block object in order; this process checks CRC-32 and SHA-256 of each against the map (so the
 * check covers the network as well) and writes it. Zero blocks stay holes in a file.
 */
export async function restoreRemote(rt: JobRuntime, remote: RemoteSpec, opts: RestoreOptions): Promise<RestoreReport> {
  const t0 = performance.now();
  const control = await connectRepositoryService(remote);
  let sink: RestoreSink | undefined;
  let codec: WorkerBlockCodec | undefined;
  let ok = false;
  const where = { vm: opts.vm, disk: opts.disk };
  const report: RestoreReport = { vm: opts.vm, disk: opts.disk, restorePoint: '', to: opts.to, sizeBytes: 0, bytesWritten: 0, zeroBytes: 0, sparse: false, durationMs: 0 };
  const pending = new Set<Promise<void>>();
  let opening: Promise<void> = Promise.resolve();
  // The first failure (the target refused, a damaged block) ends the request: nothing acknowledges
  // blocks any more, so the service would wait for credit forever. Closing the connection stops it.
  let failed: { err: unknown } | undefined;
  const fail = (err: unknown): void => {
    if (failed) return;
    failed = { err };
    void control.close().catch(() => undefined);
  };
  try {
    let map: BlockMap | undefined;
    let written = 0;
    let blocksDone = 0;
    const write = async (m: WireMessage): Promise<void> => {
      await opening;
      if (!map || !sink || !codec) throw new FerryError('PIPE_PROTOCOL', 'a block arrived before the block map', where);
      const i = Number(m.header?.i);
      const hash = map.get(i);
      if (!hash || !hash.equals(fromHex(m.header?.h, 'a block hash'))) {
        throw new FerryError('PIPE_PROTOCOL', `block ${i} does not match the block map`, { ...where, offset: i * map.blockSize });
      }
      const data = await codec.decode(m.body ?? new Uint8Array(), hash, `block ${hash.toString('hex')} (from ${remote.server})`).catch((err) => {
        throw err instanceof FerryError ? err.at({ ...where, offset: i * map!.blockSize }) : err;
      });
      if (data.length !== map.lengthOf(i)) {
        throw new FerryError('REPO_CORRUPT_OBJECT', `block holds ${data.length} bytes, the map expects ${map.lengthOf(i)}`, { ...where, offset: i * map.blockSize });
      }
      await sink.write(i * map.blockSize, data);
      report.bytesWritten += data.length;
      written += data.length;
      opts.onProgress?.(written, map.diskSize);
      // Credit for the service: it sends at most its window of blocks ahead of what was written.
      if (++blocksDone % 4 === 0) void control.conn.send({ type: 'restore.ack', header: { id: m.header?.id, done: blocksDone } }).catch(() => undefined);
    };
    const onMessage = (m: WireMessage): void => {
      if (failed) return;
      if (m.type === 'restore.map') {
        opening = (async () => {
          map = BlockMap.decode(m.body ?? new Uint8Array(), `block map of ${opts.vm}/${opts.disk} (from ${remote.server})`);
          report.restorePoint = String(m.header?.point);
          report.sizeBytes = map.diskSize;
          const idKey = typeof m.header?.idKey === 'string' ? Buffer.from(m.header.idKey, 'hex') : undefined;
          codec = new WorkerBlockCodec(rt.plugins.options, undefined, idKey);
          sink = await openRestoreSink(rt, opts.to, map.diskSize, opts.disk, { force: opts.force });
          report.to = sink.label;
          report.sparse = sink.sparse;
        })();
        opening.catch(fail);
        return;
      }
      if (m.type !== 'restore.block') return;
      const p = write(m).catch(fail);
      pending.add(p);
      void p.finally(() => pending.delete(p));
    };
    // Blocks are decoded (worker threads) and written as they arrive; the service keeps at most its
    // window of blocks unacknowledged, so memory stays bounded when the target is slow.
    await control.request<{ blocks: number }>('restore.open', { vm: opts.vm, disk: opts.disk, point: opts.point }, { onMessage });
    await opening.catch(() => undefined);
    while (pending.size) await Promise.all([...pending]);
    if (failed) throw failed.err;
    if (!map || !sink) throw new FerryError('PIPE_PROTOCOL', 'the repository service sent no block map', where);
    for (let i = 0; i < map.blockCount; i++) {
      if (map.get(i)) continue;
      await sink.zero(i * map.blockSize, map.lengthOf(i));
      report.zeroBytes += map.lengthOf(i);
    }
    ok = true;
  } catch (err) {
    // An open and writes still in flight (the connection failed under them) settle before the sink
    // says what it holds.
    await opening.catch(() => undefined);
    await Promise.allSettled([...pending]);
    throw withTargetState(failed ? failed.err : err, await sink?.finish(false).catch(() => undefined));
  } finally {
    if (ok) await sink!.finish(true).finally(() => codec?.close());
    else await codec?.close();
    await control.close();
  }
  report.durationMs = Math.round(performance.now() - t0);
  return report;
}

/** Restore points of the job's repository service (`ferry list`). */
export async function listRemotePoints(remote: RemoteSpec, vm?: string): Promise<{ location: string; points: RestorePoint[]; damaged: DamagedPoint[] }> {
  const control = await connectRepositoryService(remote);
  try {
    const { points, damaged } = await control.request<{ points: RestorePoint[]; damaged?: DamagedPoint[] }>('points.list', vm === undefined ? {} : { vm });
    return { location: `ferry://${remote.server}`, points, damaged: damaged ?? [] };
  } finally {
    await control.close();
  }
}
