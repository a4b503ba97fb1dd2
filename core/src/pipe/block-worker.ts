/**
 * Worker-thread side of `WorkerBlockCodec`: each worker discovers plugins the way the job did and
 * builds compressors by name on first use, so plugin compressors run off the main thread too.
 */
import 'reflect-metadata';
import { parentPort, workerData } from 'node:worker_threads';
import { registerBuiltins } from '../builtin.js';
import type { Compressor } from '../contracts/compressor.js';
import { FerryError } from '../errors.js';
import { PluginHost } from '../plugins/plugin-host.js';
import type { DiscoveryOptions } from '../plugins/discovery.js';
import { blockId, compressRawBlock, compressRawBlockInto, compressorOf, decodeAndVerify, decodeAndVerifyInto, encodeRawBlock, type SlotWork } from '../repository/block-codec.js';
import { toWorkerError } from './worker-pool.js';

export type BlockTask =
  | { op: 'encode'; block: Uint8Array; compressor: string; level: number }
  | { op: 'slot'; slot: number; raw: SharedArrayBuffer; out: SharedArrayBuffer }
  | { op: 'slot-encode'; slot: number; length: number; work: SlotWork; compressor: string; level: number }
  | { op: 'slot-decode'; encoded: Uint8Array; hash: Uint8Array; object: string; slot: number }
  | { op: 'decode'; encoded: Uint8Array; hash: Uint8Array; object: string };

const hostReady = PluginHost.create(workerData as DiscoveryOptions, registerBuiltins);
/** Encrypted repositories: block ids are HMAC-SHA256 under this key (`WorkerBlockCodec`'s `idKey`). */
const idKey = (workerData as { idKey?: Uint8Array }).idKey;
const compressors = new Map<string, Promise<Compressor>>();
/** Block buffers shared with the main thread (`WorkerBlockCodec.takeSlot`), by slot id. */
const slots = new Map<number, { raw: Buffer; out: Buffer }>();

function compressor(name: string): Promise<Compressor> {
  let c = compressors.get(name);
  if (!c) {
    // The plugin host stamps plugin and hook on what a compressor throws (plugins/plugin-guard.ts).
    c = hostReady.then((host) => host.create('compressor', name, host.container));
    compressors.set(name, c);
  }
  return c;
}

async function handle(task: BlockTask): Promise<{ result: unknown; transfer: ArrayBuffer[] }> {
  if (task.op === 'slot-encode') {
    const s = slots.get(task.slot);
    if (!s || task.length > s.raw.length) throw new FerryError('INTERNAL', `block slot ${task.slot} is unknown to this thread or too small`);
    const block = s.raw.subarray(0, task.length);
    // A fresh 32-byte copy: a digest may be a view of a larger pooled buffer, which would be cloned whole.
    const hash = task.work === 'compress' ? undefined : new Uint8Array(blockId(block, idKey));
    if (task.work === 'hash') return { result: { hash }, transfer: [] };
    const encodedLength = compressRawBlockInto(block, task.compressor, await compressor(task.compressor), task.level, s.out);
    return { result: { hash, encodedLength }, transfer: [] };
  }
  if (task.op === 'slot-decode') {
    const s = slots.get(task.slot);
    if (!s) throw new FerryError('INTERNAL', `block slot ${task.slot} is unknown to this thread`);
    const { name, c } = await decompressorOf(task.encoded, task.object);
    return { result: { rawLength: decodeAndVerifyInto(task.encoded, task.hash, task.object, c, name, s.raw, idKey) }, transfer: [] };
  }
  if (task.op === 'slot') throw new FerryError('INTERNAL', 'a slot announcement was sent as a task');
  if (task.op === 'encode') {
    const { hash, encoded } = encodeRawBlock(task.block, task.compressor, await compressor(task.compressor), task.level, idKey);
    return { result: { hash, encoded }, transfer: owned(encoded) };
  }
  const { name, c } = await decompressorOf(task.encoded, task.object);
  const raw = decodeAndVerify(task.encoded, task.hash, task.object, c, name, idKey);
  return { result: { raw }, transfer: owned(raw) };
}

/** The compressor a stored block names, or PLUGIN_NOT_FOUND naming the block. */
async function decompressorOf(encoded: Uint8Array, object: string): Promise<{ name: string; c: Compressor }> {
  const name = compressorOf(encoded, object);
  const c = await compressor(name).catch(() => undefined);
  if (!c) throw new FerryError('PLUGIN_NOT_FOUND', `block was compressed with "${name}", which no loaded plugin provides`, { object });
  return { name, c };
}

/** A buffer's memory can move back to the main thread only when it owns all of it. */
function owned(b: Uint8Array): ArrayBuffer[] {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength && b.buffer instanceof ArrayBuffer ? [b.buffer] : [];
}

parentPort!.on('message', ({ id, task }: { id: number; task: BlockTask }) => {
  if (task.op === 'slot') {
    // Announced to every thread (no answer): the memory a later `slot-encode` names.
    slots.set(task.slot, { raw: Buffer.from(task.raw), out: Buffer.from(task.out) });
    return;
  }
  // `busyMs`: time this thread spent on the task, queueing excluded (the session's `processing` stage).
  const t0 = performance.now();
  handle(task).then(
    ({ result, transfer }) => parentPort!.postMessage({ id, result, busyMs: performance.now() - t0 }, transfer),
    (err) => parentPort!.postMessage({ id, error: toWorkerError(err), busyMs: performance.now() - t0 }),
  );
});
