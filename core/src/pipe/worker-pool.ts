import os from 'node:os';
import { Worker, type TransferListItem } from 'node:worker_threads';
import { FerryError } from '../errors.js';

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: unknown) => void;
}

interface Slot {
  worker: Worker;
  busy: number;
  /** Why the thread died (its uncaught error), reported when it exits. */
  error?: Error;
}

/**
 * A fixed set of worker threads running one module, with a bounded queue per worker. Tasks go to the
 * least busy worker; buffers named in `transfer` move to the worker and back without copies.
 *
 * The worker module receives `{ id, task }` messages and answers `{ id, result }` or
 * `{ id, error: { message, code?, where? } }`.
 */
export class WorkerPool<T, R> {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private failure?: Error;
  /** Time the threads spent on tasks, as they measured it (queueing and messaging excluded). */
  busyMs = 0;
  private closed = false;

  constructor(
    moduleUrl: URL,
    workerData: unknown,
    size = Math.max(1, os.availableParallelism()),
  ) {
    for (let i = 0; i < size; i++) {
      const worker = new Worker(moduleUrl, { workerData });
      const slot: Slot = { worker, busy: 0 };
      worker.on('message', (msg: { id: number; result?: unknown; error?: WorkerError; busyMs?: number }) => {
        slot.busy--;
        this.busyMs += msg.busyMs ?? 0;
        const p = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (!p) return;
        if (msg.error) p.reject(reviveError(msg.error));
        else p.resolve(msg.result);
      });
      // A thread that dies takes its queued tasks with it: fail them and every later one with a
      // coded error instead of waiting for answers that never come. Not restarted: whatever killed
      // it (a plugin calling process.exit, a native crash) would likely kill the next one too.
      worker.on('error', (err) => {
        slot.error ??= err;
        this.fail(new FerryError('WORKER_FAILED', `worker thread ${i + 1} of ${size} died: uncaught ${err.name}: ${err.message}`, {}, { cause: err }));
      });
      worker.on('exit', (code) => {
        if (this.closed) return;
        const why = slot.error ? `after an uncaught ${slot.error.name}: ${slot.error.message}` : `with exit code ${code}`;
        this.fail(new FerryError('WORKER_FAILED', `worker thread ${i + 1} of ${size} exited ${why}`));
      });
      this.slots.push(slot);
    }
  }

  get size(): number {
    return this.slots.length;
  }

  run(task: T, transfer: TransferListItem[] = []): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new FerryError('INTERNAL', 'worker pool is closed'));
    const slot = this.slots.reduce((a, b) => (b.busy < a.busy ? b : a));
    const id = this.nextId++;
    return new Promise<R>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      slot.busy++;
      slot.worker.postMessage({ id, task }, transfer);
    });
  }

  /** Sends `message` to every thread, expecting no answer (e.g. shared memory they will need). */
  broadcast(message: unknown): void {
    if (this.failure || this.closed) return;
    for (const s of this.slots) s.worker.postMessage({ id: 0, task: message });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(this.slots.map((s) => s.worker.terminate()));
    this.fail(new FerryError('INTERNAL', 'worker pool closed with tasks pending'));
  }

  private fail(err: Error): void {
    this.failure ??= err instanceof FerryError ? err : new FerryError('WORKER_FAILED', `worker thread failed: ${err.message}`, {}, { cause: err });
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }
}

/** How a worker reports a failed task (FerryErrors keep code, detail and location). */
export interface WorkerError {
  message: string;
  code?: string;
  detail?: string;
  where?: object;
}

export function toWorkerError(err: unknown): WorkerError {
  if (err instanceof FerryError) return { message: err.message, code: err.code, detail: err.detail, where: err.where };
  return { message: err instanceof Error ? err.message : String(err) };
}

function reviveError(e: WorkerError): Error {
  if (e.code) return new FerryError(e.code as FerryError['code'], e.detail ?? e.message, (e.where ?? {}) as FerryError['where']);
  return new Error(e.message);
}
