import net, { type Socket } from 'node:net';
import { formatAddress, parseAddress } from '../address.js';

/**
 * A loopback TCP relay for tests: clients connect to the relay, the relay connects each one to the
 * target and copies bytes both ways, counting them. Tests cut the connections (all at once, or
 * once a number of bytes went through) to see that both sides notice and resume. It knows nothing
 * of TLS or frames: a cut lands wherever the byte count says, mid-record and mid-frame included.
 */
export interface TcpRelay {
  host: string;
  port: number;
  /** `host:port` to give to clients instead of the target's. */
  address: string;
  target: string;
  /** Connections accepted so far (also counting refused and cut ones). */
  readonly count: number;
  /** Connections open now. */
  readonly open: number;
  /** Bytes copied client → target and target → client. */
  readonly bytes: { toTarget: number; fromTarget: number };
  /** Both directions together. */
  readonly bytesRelayed: number;
  /** How many times connections were cut (by `cut()` or a `cutAfter` hook). */
  readonly cuts: number;
  /** While true, new clients are accepted and dropped at once (a peer that is gone). */
  refuseNew: boolean;
  /** Destroys every current connection, both halves, like a dropped network. */
  cut(): void;
  /**
   * Cuts all connections once `bytes` more bytes have been relayed (both directions counted), and
   * again after each further `bytes`, `times` times in all. At most `bytes` get through per round.
   */
  cutAfter(bytes: number, times?: number): void;
  close(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket;
}

export async function startTcpRelay(opts: { target: string; listen?: string }): Promise<TcpRelay> {
  const relay = new Relay(opts.target);
  await relay.listen(opts.listen ?? '127.0.0.1:0');
  return relay;
}

class Relay implements TcpRelay {
  host = '';
  port = 0;
  address = '';
  readonly target: string;
  count = 0;
  cuts = 0;
  readonly bytes = { toTarget: 0, fromTarget: 0 };
  refuseNew = false;
  private readonly to: { host: string; port: number };
  private readonly server = net.createServer((client) => this.onClient(client));
  private readonly pairs = new Set<Pair>();
  /** Bytes still allowed before the next armed cut, cuts still armed, and the budget per round. */
  private budget = Infinity;
  private armed = 0;
  private every = 0;

  constructor(target: string) {
    this.to = parseAddress(target);
    this.target = formatAddress(this.to.host, this.to.port);
  }

  get open(): number {
    return this.pairs.size;
  }

  get bytesRelayed(): number {
    return this.bytes.toTarget + this.bytes.fromTarget;
  }

  async listen(listen: string): Promise<void> {
    const bind = parseAddress(listen);
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(bind.port, bind.host, () => resolve());
    });
    this.host = bind.host;
    this.port = (this.server.address() as net.AddressInfo).port;
    this.address = formatAddress(this.host, this.port);
  }

  cut(): void {
    this.cuts++;
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
  }

  cutAfter(bytes: number, times = 1): void {
    if (!Number.isInteger(bytes) || bytes < 0 || !Number.isInteger(times) || times < 1) {
      throw new RangeError(`cutAfter(${bytes}, ${times}): need whole numbers, times >= 1`);
    }
    this.every = bytes;
    this.budget = bytes;
    this.armed = times;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const p of this.pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    this.pairs.clear();
    await closed;
  }

  private onClient(client: Socket): void {
    this.count++;
    client.on('error', () => undefined);
    if (this.refuseNew) return void client.destroy();
    const upstream = net.connect({ host: this.to.host, port: this.to.port });
    upstream.on('error', () => undefined);
    const p: Pair = { client, upstream };
    this.pairs.add(p);
    client.on('data', (d: Buffer) => this.relay(d, client, upstream, 'toTarget'));
    upstream.on('data', (d: Buffer) => this.relay(d, upstream, client, 'fromTarget'));
    // A half that ends or breaks takes the other with it, so each side sees what the other saw.
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    const drop = (): void => {
      this.pairs.delete(p);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', drop);
    upstream.on('close', drop);
  }

  /** Copies one chunk from `from` to `to`, or the part of it an armed cut lets through. */
  private relay(chunk: Buffer, from: Socket, to: Socket, dir: keyof Relay['bytes']): void {
    if (this.armed > 0 && chunk.length >= this.budget) {
      const part = chunk.subarray(0, this.budget);
      if (part.length) to.write(part);
      this.bytes[dir] += part.length;
      this.armed--;
      this.budget = this.armed > 0 ? this.every : Infinity;
      this.cut();
      return;
    }
    if (this.armed > 0) this.budget -= chunk.length;
    this.bytes[dir] += chunk.length;
    // Backpressure: a slow reader on one side slows the other, as a real network path would.
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  }
}
