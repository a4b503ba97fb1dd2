/**
 * Worker-thread side of `WorkerBlockCodec`: each worker discovers plugins the way the job did and
 * builds compressors by name on first use, so plugin compressors run off the main thread too.
 */
import 'reflect-metadata';
import { parentPort, workerData } from 'node:worker_threads';
import { registerBuiltinCompressors } from '../compression/builtin-compressors.js';
import { PluginHost } from '../plugins/plugin-host.js';
import type { DiscoveryOptions } from '../plugins/discovery.js';
import { BlockTasks, type BlockTask } from './block-tasks.js';
import { toWorkerError } from './worker-pool.js';

export type { BlockTask } from './block-tasks.js';

// Compressors are all a worker builds: the built-in block filters (and the disk formats) stay unloaded.
const hostReady = PluginHost.create(workerData as DiscoveryOptions, registerBuiltinCompressors);
// The plugin host stamps plugin and hook on what a compressor throws (plugins/plugin-guard.ts).
const tasks = new BlockTasks(
  (name) => hostReady.then((host) => host.create('compressor', name, host.container)),
  /** Encrypted repositories: block ids are HMAC-SHA256 under this key (`WorkerBlockCodec`'s `idKey`). */
  (workerData as { idKey?: Uint8Array }).idKey,
);

parentPort!.on('message', ({ id, task }: { id: number; task: BlockTask }) => {
  if (task.op === 'slot') {
    // Announced to every thread (no answer): the memory a later `slot-encode` names.
    tasks.addSlot(task.slot, task.raw, task.out);
    return;
  }
  // `busyMs`: time this thread spent on the task, queueing excluded (the session's `processing` stage).
  const t0 = performance.now();
  tasks.handle(task).then(
    ({ result, transfer }) => parentPort!.postMessage({ id, result, busyMs: performance.now() - t0 }, transfer),
    (err) => parentPort!.postMessage({ id, error: toWorkerError(err), busyMs: performance.now() - t0 }),
  );
});
