/**
 * Worker-thread side of `WorkerBlockCodec`: builds compressors by name on first use, so plugin
 * compressors run off the main thread too. The compressor packages the job's plugin host found come
 * in `workerData.compressorPlugins` and are imported directly (`leanCompressors`); the thread repeats
 * the plugin discovery only for a compressor that path cannot build.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { Compressor } from '../contracts/compressor.js';
import type { DiscoveryOptions } from '../plugins/discovery.js';
import { BlockTasks, type BlockTask } from './block-tasks.js';
import { leanCompressors, type CompressorPlugin } from './worker-compressors.js';
import { toWorkerError } from './worker-pool.js';

export type { BlockTask } from './block-tasks.js';

type WorkerData = DiscoveryOptions & { idKey?: Uint8Array; compressorPlugins?: CompressorPlugin[] };
const data = workerData as WorkerData;

/**
 * The plugin host, started only for a compressor the lean path cannot build (`leanCompressors`):
 * it discovers plugins the way the job did, and registers only the built-in compressors (the
 * block filters and disk formats stay unloaded). It stamps plugin and hook on what a compressor
 * throws (plugins/plugin-guard.ts).
 */
let host: Promise<(name: string) => Promise<Compressor>> | undefined;
const viaHost = async (name: string): Promise<Compressor> => {
  host ??= (async () => {
    const [{ PluginHost }, { registerBuiltinCompressors }] = await Promise.all([import('../plugins/plugin-host.js'), import('../compression/builtin-compressors.js')]);
    const h = await PluginHost.create(data, registerBuiltinCompressors);
    return (n: string) => h.create('compressor', n, h.container);
  })();
  return (await host)(name);
};

const tasks = new BlockTasks(
  leanCompressors(data.compressorPlugins ?? [], viaHost),
  /** Encrypted repositories: block ids are HMAC-SHA256 under this key (`WorkerBlockCodec`'s `idKey`). */
  data.idKey,
);

parentPort!.on('message', ({ id, task }: { id: number; task: BlockTask }) => {
  // Announced to every thread (no answer): the memory a later `slot-encode` names, the seen ids.
  if (tasks.announce(task)) return;
  // `busyMs`: time this thread spent on the task, queueing and a block's read (`readMs`, the
  // `source read` stage) excluded (the session's `processing` stage).
  const t0 = performance.now();
  tasks.handle(task).then(
    ({ result, transfer }) => parentPort!.postMessage({ id, result, busyMs: performance.now() - t0 - ((result as { readMs?: number }).readMs ?? 0) }, transfer),
    (err) => parentPort!.postMessage({ id, error: toWorkerError(err), busyMs: performance.now() - t0 }),
  );
});
