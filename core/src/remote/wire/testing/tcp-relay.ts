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
  const target = parseAddress(opts.target);
  const bind = parseAddress(opts.listen ?? '127.0.0.1:0');
  const pairs = new Set<Pair>();
  const bytes = { toTarget: 0, fromTarget: 0 };
  let count = 0;
  let cuts = 0;
  /** Remaining bytes before the next armed cut, and how many cuts are still armed. */
  let budget = Infinity;
  let armed = 0;
  let every = 0;

  const cut = (): void => {
    cuts++;
    for (const p of pairs) {
      p.client.destroy();
      p.upstream.destroy();
    }
    pairs.clear();
  };

  /** Copies one chunk from `from` to `to`, or the part of it an armed cut lets through. */
  const relay = (chunk: Buffer, from: Socket, to: Socket, dir: keyof typeof bytes): void => {
    if (armed > 0 && chunk.length >= budget) {
      const part = chunk.subarray(0, budget);
      if (part.length) to.write(part);
      bytes[dir] += part.length;
      armed--;
      budget = armed > 0 ? every : Infinity;
      cut();
      return;
    }
    if (armed > 0) budget -= chunk.length;
    bytes[dir] += chunk.length;
    // Backpressure: a slow reader on one side slows the other, as a real network path would.
    if (!to.write(chunk)) {
      from.pause();
      to.once('drain', () => from.resume());
    }
  };

  const server = net.createServer((client) => {
    count++;
    client.on('error', () => undefined);
    if (relayState.refuseNew) return void client.destroy();
    const upstream = net.connect({ host: target.host, port: target.port });
    upstream.on('error', () => undefined);
    const p: Pair = { client, upstream };
    pairs.add(p);
    client.on('data', (d: Buffer) => relay(d, client, upstream, 'toTarget'));
    upstream.on('data', (d: Buffer) => relay(d, upstream, client, 'fromTarget'));
    // A half that ends or breaks takes the other with it, so each side sees what the other saw.
    client.on('end', () => upstream.end());
    upstream.on('end', () => client.end());
    const drop = (): void => {
      pairs.delete(p);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', drop);
    upstream.on('close', drop);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(bind.port, bind.host, () => resolve());
  });
  const port = (server.address() as net.AddressInfo).port;

  const relayState: TcpRelay = {
    host: bind.host,
    port,
    address: formatAddress(bind.host, port),
    target: formatAddress(target.host, target.port),
    get count() { return count; },
    get open() { return pairs.size; },
    bytes,
    get bytesRelayed() { return bytes.toTarget + bytes.fromTarget; },
    get cuts() { return cuts; },
    refuseNew: false,
    cut,
    cutAfter: (n: number, times = 1) => {
      if (!Number.isInteger(n) || n < 0 || !Number.isInteger(times) || times < 1) throw new RangeError(`cutAfter(${n}, ${times}): need whole numbers, times >= 1`);
      every = n;
      budget = n;
      armed = times;
    },
    close: async () => {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const p of pairs) {
        p.client.destroy();
        p.upstream.destroy();
      }
      pairs.clear();
      await closed;
    },
  };
  return relayState;
}
