import { Worker } from 'node:worker_threads';
import { FerryError } from '../errors.js';

/**
 * Joins a pack's parts into one buffer and computes its SHA-256 (the pack id) on a thread of its own,
 * so a backup's main thread, which orders blocks and drives the I/O, does not spend ~1.2 s per GiB
 * copying and hashing packs. The parts' memory moves to the thread and the joined pack moves back
 * (no copies on the main thread; a part that does not own its whole ArrayBuffer is copied once).
 * One thread per process, started on first use (a few milliseconds: it loads nothing but node:crypto)
 * and kept out of the event loop's count while idle, so it never holds a process open.
 */
const SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, parts, size }) => {
  const bytes = new Uint8Array(new ArrayBuffer(size));
  let at = 0;
  for (const p of parts) { bytes.set(p, at); at += p.byteLength; }
  const hash = createHash('sha256').update(bytes).digest('hex');
  parentPort.postMessage({ id, bytes, hash }, [bytes.buffer]);
});
`;

interface Waiter {
  resolve: (v: { bytes: Buffer; id: string }) => void;
  reject: (err: Error) => void;
}

let thread: { worker: Worker; waiting: Map<number, Waiter>; next: number; failure?: FerryError } | undefined;

function start(): NonNullable<typeof thread> {
  const worker = new Worker(SOURCE, { eval: true });
  const t: NonNullable<typeof thread> = { worker, waiting: new Map(), next: 1 };
  worker.unref();
  worker.on('message', ({ id, bytes, hash }: { id: number; bytes: Uint8Array; hash: string }) => {
    const w = t.waiting.get(id);
    t.waiting.delete(id);
    if (t.waiting.size === 0) worker.unref();
    w?.resolve({ bytes: Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), id: hash });
  });
  const fail = (why: string): void => {
    t.failure ??= new FerryError('WORKER_FAILED', `the pack hashing thread ${why}`);
    for (const w of t.waiting.values()) w.reject(t.failure);
    t.waiting.clear();
    if (thread === t) thread = undefined; // the next pack starts a new thread
  };
  worker.on('error', (err) => fail(`died: ${err?.message ?? String(err)}`));
  worker.on('exit', (code) => fail(`exited with code ${code}`));
  return t;
}

/** The parts joined in order, and the SHA-256 of the whole in hex. The parts are unusable after. */
export function joinAndHash(parts: Uint8Array[]): Promise<{ bytes: Buffer; id: string }> {
  const t = (thread ??= start());
  const moved = new Set<ArrayBuffer>();
  const send = parts.map((p) => {
    const owns = p.byteOffset === 0 && p.byteLength === p.buffer.byteLength && p.buffer instanceof ArrayBuffer && !moved.has(p.buffer);
    const q = owns ? p : new Uint8Array(p);
    moved.add(q.buffer as ArrayBuffer);
    return q;
  });
  const size = send.reduce((n, p) => n + p.byteLength, 0);
  const id = t.next++;
  return new Promise((resolve, reject) => {
    try {
      t.worker.postMessage({ id, parts: send, size }, [...moved]);
    } catch (err) {
      // e.g. a part whose memory was moved away already (a caller that reused a record after `add`)
      reject(new FerryError('INTERNAL', `a pack part cannot be handed to the hashing thread: ${(err as Error).message}`, {}, { cause: err }));
      return;
    }
    t.waiting.set(id, { resolve, reject });
    t.worker.ref();
  });
}
