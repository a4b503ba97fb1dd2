import { connect, listen, type Connection, type PeerRole, type WireMessage } from '@ferry/core/remote/wire';

/** Where a message is going: from the connecting client to the target, or back. */
export type Direction = 'toTarget' | 'fromTarget';

export interface MessageRelay {
  /** `host:port` to give the client instead of the target's. */
  address: string;
  /** Messages `alter` dropped (returned undefined for). */
  readonly dropped: number;
  /** Messages `alter` changed (returned another object for). */
  readonly altered: number;
  close(): Promise<void>;
}

/**
 * A test double at the message level, built from the wire layer: it accepts the client as the
 * target's role, connects to the target as the client's role (both with the installation's
 * certificates) and forwards every message, passing each through `alter` first, which may return
 * it unchanged, a changed copy, or undefined to drop it. A service that skips a block or a proxy
 * that lies about a block's id, without any test hook in the shipped services.
 */
export async function startMessageRelay(opts: {
  target: string;
  certs: string;
  /** The role the relay plays towards the client (the target's role). */
  as: PeerRole;
  /** The role the relay plays towards the target (the client's role). */
  towardsTarget: PeerRole;
  alter: (m: WireMessage, dir: Direction) => WireMessage | undefined;
}): Promise<MessageRelay> {
  const open = new Set<Connection>();
  const counts = { dropped: 0, altered: 0 };
  const pump = async (from: Connection, to: Connection, dir: Direction): Promise<void> => {
    try {
      for await (const m of from) {
        const out = opts.alter(m, dir);
        if (!out) {
          counts.dropped++;
          continue;
        }
        if (out !== m) counts.altered++;
        await to.send(out);
      }
    } catch {
      // either side went away: close both
    }
    await Promise.all([from.close().catch(() => undefined), to.close().catch(() => undefined)]);
  };
  const l = await listen({
    listen: '127.0.0.1:0',
    auth: { kind: 'certs', dir: opts.certs, role: opts.as },
    allow: { roles: [opts.towardsTarget] },
    onConnection: (client) => {
      open.add(client);
      void connect({ address: opts.target, auth: { kind: 'certs', dir: opts.certs, role: opts.towardsTarget }, expectRole: opts.as }).then(
        (target) => {
          open.add(target);
          void pump(client, target, 'toTarget');
          void pump(target, client, 'fromTarget');
        },
        () => void client.close(),
      );
    },
  });
  return {
    address: `127.0.0.1:${l.port}`,
    get dropped() {
      return counts.dropped;
    },
    get altered() {
      return counts.altered;
    },
    close: async () => {
      await l.close();
      await Promise.all([...open].map((c) => c.close().catch(() => undefined)));
    },
  };
}
