import { FerryError } from '../../errors.js';
import { isPeerRole, type PeerAllow, type PeerInfo, type PeerRole } from './types.js';

/**
 * HELLO, the first frame each side sends after TLS. The client speaks first; the listener answers
 * with its own HELLO only when it accepts the client, so a client whose `connect` resolved was
 * accepted (a refusal arrives as a BYE frame naming the PIPE_* code instead).
 */
export const PIPE_PROTOCOL_NAME = 'ferry-pipe';
/**
 * The pipe protocol version: HELLO, and the services' messages over it (read tasks, control
 * requests). The one source of this number; everything that states a version imports it. (The frame
 * layout has its own number, `FRAME_FORMAT_VERSION` in `frame.ts`.)
 *
 * 1: every frame's CRC-32 covers its body. 2: message bodies are sent with the frame flag
 * BODY_UNCHECKED (the CRC-32 covers prefix and header; TLS authenticates the body), and a read task
 * names the version its connection agreed on. Everything else is the same, so a side of version 2
 * speaks version 1 with a peer that lists only 1.
 */
export const PIPE_VERSION = 2;
/** Protocol versions this build speaks; the highest one both sides list is used. */
export const SUPPORTED_VERSIONS: readonly number[] = [1, PIPE_VERSION];
/** The first version whose message frames may carry FRAME_FLAG_BODY_UNCHECKED. */
export const UNCHECKED_BODY_VERSION = 2;

export interface Hello {
  protocol: string;
  versions: number[];
  role: PeerRole;
  name: string;
}

/** What TLS proved about the peer: role and name from its certificate, or the PSK identity. */
export interface ProvenPeer {
  role?: PeerRole;
  name?: string;
}

export function makeHello(role: PeerRole, name: string, versions: readonly number[] = SUPPORTED_VERSIONS): Hello {
  return { protocol: PIPE_PROTOCOL_NAME, versions: [...versions], role, name };
}

/**
 * Checks the peer's HELLO against what TLS proved and what this side speaks; returns the peer and
 * the version to use. The role comes from the certificate when there is one: a claim that differs
 * is refused, not believed.
 */
export function acceptHello(h: Record<string, unknown>, proven: ProvenPeer, address: string, versions: readonly number[] = SUPPORTED_VERSIONS): { peer: PeerInfo; version: number } {
  const where = { host: address };
  if (h.protocol !== PIPE_PROTOCOL_NAME) {
    throw new FerryError('PIPE_PROTOCOL', `HELLO names protocol ${JSON.stringify(h.protocol)}, expected "${PIPE_PROTOCOL_NAME}"`, where);
  }
  if (!Array.isArray(h.versions) || !h.versions.every((v) => Number.isInteger(v))) {
    throw new FerryError('PIPE_PROTOCOL', 'HELLO has no list of protocol versions', where);
  }
  const common = (h.versions as number[]).filter((v) => versions.includes(v));
  if (!common.length) {
    throw new FerryError('PIPE_VERSION', `peer speaks protocol versions [${h.versions.join(', ')}], this side [${versions.join(', ')}]`, where);
  }
  if (!isPeerRole(h.role) || typeof h.name !== 'string' || !h.name) {
    throw new FerryError('PIPE_PROTOCOL', `HELLO has no valid role and name (role ${JSON.stringify(h.role)})`, where);
  }
  if (proven.role && proven.role !== h.role) {
    throw new FerryError('PIPE_AUTH', `peer claims role ${h.role} but its certificate says ${proven.role}`, where);
  }
  const peer: PeerInfo = { role: proven.role ?? h.role, name: proven.name ?? h.name, address };
  return { peer, version: Math.max(...common) };
}

/** A listener's `allow` check: undefined when the peer may stay, the refusal otherwise. */
export function checkAllowed(peer: PeerInfo, allow: PeerAllow | undefined): FerryError | undefined {
  if (allow?.roles && !allow.roles.includes(peer.role)) {
    return new FerryError('PIPE_AUTH', `peer ${peer.name} has role ${peer.role}; this listener allows ${allow.roles.join(', ')}`, { host: peer.address });
  }
  if (allow?.names && !allow.names.includes(peer.name)) {
    return new FerryError('PIPE_AUTH', `peer name ${peer.name} (role ${peer.role}) is not in this listener's allowed names`, { host: peer.address });
  }
  return undefined;
}

/** A client's `expectRole` check. */
export function checkExpectedRole(peer: PeerInfo, expect: PeerRole | PeerRole[] | undefined): FerryError | undefined {
  if (expect === undefined) return undefined;
  const roles = Array.isArray(expect) ? expect : [expect];
  if (roles.includes(peer.role)) return undefined;
  return new FerryError('PIPE_AUTH', `peer ${peer.name} has role ${peer.role}; expected ${roles.join(' or ')}`, { host: peer.address });
}
