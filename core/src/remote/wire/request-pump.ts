import type { Connection, WireMessage } from './types.js';

/** One request waiting for its answer; `onMessage` takes the other messages that carry its id. */
export interface PendingRequest {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  onMessage?: (m: WireMessage) => void;
}

export interface RequestPumpOptions<P extends PendingRequest> {
  /** The message type that answers a request (and ends it). */
  answerType: string;
  /** The error every waiting request gets when the peer closes the connection. */
  closed: () => Error;
  /** Settles a request from its answer (checks the result, maps an error). */
  settle: (pending: P, answer: WireMessage) => void;
}

/**
 * Requests and their answers over one connection, several in flight, matched by the `id` in each
 * message's header. The answer of a request ends it; any other message with its id goes to its
 * `onMessage`, messages with an unknown id are dropped. A failed send or a lost connection fails
 * every waiting request and every later one with the same error. Used by the backup server's
 * control channel to a repository service and by its guest proxy client.
 */
export class RequestPump<P extends PendingRequest = PendingRequest> {
  private nextId = 1;
  private readonly waiting = new Map<number, P>();
  private failed?: Error;
  private readonly pump: Promise<void>;

  constructor(
    readonly conn: Connection,
    private readonly options: RequestPumpOptions<P>,
  ) {
    this.pump = this.run();
  }

  /**
   * Sends the message `make` builds for a fresh id and waits for its answer through `pending`;
   * returns the id. After a failure `pending` is rejected at once (and the id is 0).
   */
  start(make: (id: number) => WireMessage, pending: P): number {
    if (this.failed) {
      pending.reject(this.failed);
      return 0;
    }
    const id = this.nextId++;
    this.waiting.set(id, pending);
    this.conn.send(make(id)).catch((err: Error) => this.fail(err));
    return id;
  }

  /** Closes the connection and waits for the pump to stop (waiting requests fail). */
  async close(): Promise<void> {
    await this.conn.close('done').catch(() => undefined);
    await this.pump;
  }

  private async run(): Promise<void> {
    try {
      for (;;) {
        const m = await this.conn.receive();
        if (!m) throw this.options.closed();
        const id = Number(m.header?.id);
        const pending = this.waiting.get(id);
        if (!pending) continue;
        if (m.type === this.options.answerType) {
          this.waiting.delete(id);
          this.options.settle(pending, m);
        } else {
          pending.onMessage?.(m);
        }
      }
    } catch (err) {
      this.fail(err as Error);
    }
  }

  private fail(err: Error): void {
    this.failed ??= err;
    for (const pending of this.waiting.values()) pending.reject(this.failed);
    this.waiting.clear();
  }
}
