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
 * Up to `size` worker threads running one module, with a bounded queue per worker. Tasks go to the
 * least busy worker; buffers named in `transfer` move to the worker and back without copies.
 *
 * Threads start as work needs them: one at once (or at the first task), another only when a task
 * arrives while every running thread is busy. A small job (one block) thus starts one thread, not one per core: each
 * costs ~0.2 core-s of start-up (bootstrap, plugin discovery). Broadcast messages reach threads
 * started later too, in the order they were sent.
 *
 * The worker module receives `{ id, task }` messages and answers `{ id, result }` or
 * `{ id, error: { message, code?, where? } }`.
 */
export class WorkerPool<T, R> {
  private readonly slots: Slot[] = [];
  private readonly pending = new Map<number, Pending>();
  /** Every broadcast so far, replayed to each thread started later. */
  private readonly broadcasts: unknown[] = [];
  private nextId = 1;
  private failure?: Error;
  /** Time the threads spent on tasks, as they measured it (queueing and messaging excluded). */
  busyMs = 0;
  private closed = false;

  constructor(
    private readonly moduleUrl: URL,
    private readonly workerData: unknown,
    /** The most threads this pool starts. */
    readonly maxSize = Math.max(1, os.availableParallelism()),
    /** Threads started at once (0: the first task starts one). */
    startThreads = 1,
  ) {
    for (let i = 0; i < Math.min(startThreads, maxSize); i++) this.spawn();
  }

  private spawn(): Slot {
    const i = this.slots.length;
    const size = this.maxSize;
    const worker = new Worker(this.moduleUrl, { workerData: this.workerData });
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
    for (const message of this.broadcasts) worker.postMessage({ id: 0, task: message });
    this.slots.push(slot);
    return slot;
  }

  /** Starts threads up to `maxSize` now (a resident service pays their start-up before its first job). */
  startAll(): void {
    if (this.failure || this.closed) return;
    while (this.slots.length < this.maxSize) this.spawn();
  }

  /** Threads started so far (at most `maxSize`). */
  get size(): number {
    return this.slots.length;
  }

  run(task: T, transfer: TransferListItem[] = []): Promise<R> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new FerryError('INTERNAL', 'worker pool is closed'));
    let slot = this.slots.length ? this.slots.reduce((a, b) => (b.busy < a.busy ? b : a)) : undefined;
    if (!slot || (slot.busy > 0 && this.slots.length < this.maxSize)) slot = this.spawn();
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
    this.broadcasts.push(message);
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
