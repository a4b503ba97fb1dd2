/**
 * The job's `parallelDisks` limit: a counting semaphore shared by every VM of a session, so at most
 * `limit` disks move data at once whichever VMs they belong to. Waiters are served in arrival order:
 * a VM's disks ask in disk order, but VMs prepare concurrently (points listed, snapshot taken), so a
 * later VM's disk may take a free slot before an earlier VM's second disk asks. Slots never idle.
 */
export class DiskSlots {
  private free: number;
  private readonly waiting: (() => void)[] = [];

  constructor(readonly limit: number) {
    this.free = Math.max(1, Math.floor(limit));
  }

  /** Runs `op` once a slot is free and gives the slot back however `op` ends. */
  async run<T>(op: () => Promise<T>): Promise<T> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    try {
      return await op();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    }
  }
}

/**
 * Maps `items` through `op` with at most `limit` calls under way, starting them in order; the
 * results keep the order of `items` (so reports stay in inventory order whatever finishes first).
 * `op` should not reject: a rejection is passed on after every started call has settled.
 */
export async function mapInOrder<I, R>(items: readonly I[], limit: number, op: (item: I, index: number) => Promise<R>): Promise<R[]> {
  const out = new Array<R>(items.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await op(items[i], i);
    }
  };
  const lanes = Array.from({ length: Math.max(1, Math.min(Math.floor(limit), items.length)) }, lane);
  const settled = await Promise.allSettled(lanes);
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  return out;
}
