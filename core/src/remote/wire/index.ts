/**
 * The data pipe's wire layer: framed, authenticated connections between the backup server, proxies
 * and repository services. The services above it (`core/src/remote/services`) decide what the
 * messages mean; this layer guarantees who the peer is, that every frame arrived intact, that a
 * slow reader slows the writer, and that a dead peer is noticed. Format: `docs/data-pipe.md`.
 */
export type {
  PeerRole, PeerAuth, WireMessage, PeerInfo, Connection, PeerAllow, ConnectOptions, ListenOptions, Listener,
} from './types.js';
export { PEER_ROLES, isPeerRole, DEFAULT_HEARTBEAT_MS, DEFAULT_TIMEOUT_MS, MISSED_HEARTBEATS } from './types.js';
export { connect, listen } from './transport.js';
export { servePeers, type PeerService } from './serve-peers.js';
export { connectionPair, type ConnectionPairOptions } from './memory-pair.js';
export { initCerts, CERT_FILES, DEFAULT_CERT_DAYS, type InitCertsOptions } from './certs.js';
export { parseAddress, formatAddress } from './address.js';
export { DEFAULT_MAX_FRAME_BYTES, MAX_HEADER_BYTES } from './frame.js';
export { PIPE_VERSION, SUPPORTED_VERSIONS, PIPE_PROTOCOL_NAME } from './handshake.js';
export { PSK_CIPHERS, MIN_PSK_BYTES } from './tls-auth.js';
