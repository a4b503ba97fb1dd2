import { listen } from './transport.js';
import type { Connection, Listener, ListenOptions, PeerRole } from './types.js';

/** A service that takes each accepted connection of a listener, and closes after it. */
export interface PeerService {
  serve(conn: Connection): Promise<void>;
  close(): Promise<void>;
}

/**
 * Listens for the one peer role a service accepts (optionally only certain certificate names) and
 * hands it every connection; refused clients are logged. Closing stops listening first, then the
 * service, then `after` (a worker pool, say). The data movers and the guest interaction proxy run
 * this way.
 */
export async function servePeers(opts: {
  listen: string;
  auth: ListenOptions['auth'];
  accept: PeerRole;
  names?: string[];
  heartbeatMs?: number;
  service: PeerService;
  log: (line: string) => void;
  after?: () => Promise<void>;
}): Promise<Listener> {
  const { service, log } = opts;
  const listener = await listen({
    listen: opts.listen,
    auth: opts.auth,
    allow: { roles: [opts.accept], ...(opts.names && { names: opts.names }) },
    heartbeatMs: opts.heartbeatMs,
    onConnection: (conn) => void service.serve(conn),
    onRefused: (err, remote) => log(`refused ${remote}: ${err.message}`),
  });
  return {
    host: listener.host,
    port: listener.port,
    close: async () => {
      await listener.close();
      await service.close();
      await opts.after?.();
    },
  };
}
