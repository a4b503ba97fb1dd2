/**
 * The data pipe's public types: who the peers are, how they authenticate, and what a connection
 * offers to the data movers above it. The frame format below them is `frame.ts` and
 * `docs/data-pipe.md`.
 */

export type PeerRole = 'server' | 'proxy' | 'repository';

export const PEER_ROLES: readonly PeerRole[] = ['server', 'proxy', 'repository'];

export function isPeerRole(s: unknown): s is PeerRole {
  return typeof s === 'string' && (PEER_ROLES as readonly string[]).includes(s);
}

/**
 * How this side proves who it is and checks the peer.
 * - `certs`: mutual TLS 1.3; `dir` holds `ca.crt` and `<role>.crt`/`<role>.key` (`ferry certs init`).
 *   The peer's role is the OU of its certificate, its name the CN: both signed by the CA.
 * - `psk`: TLS 1.3 with an external pre-shared key (at least 16 bytes). Whoever holds the key is
 *   trusted; the peer's role and name are what its HELLO says (a key does not tell roles apart).
 */
export type PeerAuth =
  | { kind: 'certs'; dir: string; role: PeerRole }
  | { kind: 'psk'; key: Buffer; identity: string; role: PeerRole };

/** One application message: `type` routes it, `header` is JSON, `body` carries bytes as they are. */
export interface WireMessage {
  type: string;
  header?: Record<string, unknown>;
  body?: Uint8Array;
  /**
   * Received messages with a large body may carry this: the receiver is done with `body` and the
   * connection may reuse its memory for a later frame. Optional to call (memory never given back is
   * left to the garbage collector); never call it while anything may still read `body`.
   */
  release?: () => void;
}

/** The authenticated peer of a connection. `address` is `host:port` (or `memory` for a pair). */
export interface PeerInfo {
  role: PeerRole;
  name: string;
  address: string;
}

export interface Connection extends AsyncIterable<WireMessage> {
  readonly peer: PeerInfo;
  /** The protocol version both sides agreed on in HELLO. */
  readonly version: number;
  /** Resolves when the frame is accepted by the socket below its high-water mark (backpressure). */
  send(msg: WireMessage): Promise<void>;
  /** Next message; undefined after an orderly close; rejects with a FerryError (PIPE_*) when broken. */
  receive(): Promise<WireMessage | undefined>;
  /** Says goodbye (the peer's receive() then ends with undefined) and closes the socket. */
  close(reason?: string): Promise<void>;
  /** Settles when the connection ends: undefined for orderly close, the error otherwise. */
  readonly closed: Promise<Error | undefined>;
}

/** Which authenticated peers a listener accepts; a missing list allows any. */
export interface PeerAllow {
  roles?: PeerRole[];
  names?: string[];
}

export interface ConnectOptions {
  address: string;
  auth: PeerAuth;
  expectRole?: PeerRole | PeerRole[];
  /** Bound on TCP connect + TLS handshake + HELLO (default 10 s). */
  timeoutMs?: number;
  /** Idle interval for ping frames (default 5 s); three intervals without a frame → PIPE_TIMEOUT. */
  heartbeatMs?: number;
  signal?: AbortSignal;
  /** This side's name in HELLO (default: the certificate's CN, or the PSK identity). */
  name?: string;
  /** Largest frame accepted from the peer (default `DEFAULT_MAX_FRAME_BYTES`). */
  maxFrameBytes?: number;
}

export interface ListenOptions {
  listen: string;
  auth: PeerAuth;
  allow?: PeerAllow;
  heartbeatMs?: number;
  onConnection: (c: Connection) => void;
  /** A client that failed TLS, HELLO or `allow`; the listener keeps serving others. */
  onRefused?: (err: Error, remote: string) => void;
  /** Bound on TLS handshake + HELLO per client (default 10 s). */
  timeoutMs?: number;
  name?: string;
  maxFrameBytes?: number;
}

export interface Listener {
  host: string;
  port: number;
  /** Stops accepting and closes the connections this listener accepted. */
  close(): Promise<void>;
}

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_HEARTBEAT_MS = 5_000;
/** Heartbeat intervals without any frame from the peer before the connection fails. */
export const MISSED_HEARTBEATS = 3;
