/**
 * Bounds how many requests are on the wire at once. Waiters are served first come, first served,
 * so a large read split into pieces cannot starve a block status query behind it forever. Once
 * `close` is called every waiter and every later `acquire` rejects with its error.
 */
export class RequestSlots {
  private active = 0;
  private readonly waiting: { resolve: () => void; reject: (err: Error) => void }[] = [];
  private failure: Error | undefined;

  constructor(readonly max: number) {
    if (!Number.isInteger(max) || max < 1) throw new Error(`maxInFlight must be a positive integer, not ${max}`);
  }

  acquire(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.active < this.max) {
      this.active++;
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  release(): void {
    const next = this.waiting.shift();
    // The slot passes straight to the next waiter; `active` stays the same.
    if (next) next.resolve();
    else this.active = Math.max(0, this.active - 1);
  }

  close(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }
}
