import { isIP } from 'node:net';
import { FerryError } from '../../errors.js';

/**
 * Parses `host:port` or `[v6]:port` (port 0..65535; 0 lets a listener pick one). A bare IPv6
 * address must be in brackets, so the last colon is never ambiguous.
 */
export function parseAddress(s: string): { host: string; port: number } {
  const bad = (why: string): FerryError => new FerryError('CLI_USAGE', `address ${JSON.stringify(s)} ${why}; write HOST:PORT or [IPv6]:PORT`);
  if (typeof s !== 'string' || !s) throw bad('is empty');
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(s) ?? /^([^:[\]\s]+):(\d+)$/.exec(s);
  if (!m) throw bad(s.split(':').length > 2 && !s.startsWith('[') ? 'has an IPv6 host without brackets' : 'is not HOST:PORT');
  const [, host, portText] = m;
  if (s.startsWith('[') && isIP(host) !== 6) throw bad('has brackets around something that is not an IPv6 address');
  const port = Number(portText);
  if (!Number.isInteger(port) || port > 65535) throw bad(`has port ${portText} outside 0..65535`);
  return { host, port };
}

/** The inverse of `parseAddress`: brackets around IPv6 hosts. */
export function formatAddress(host: string, port: number): string {
  return isIP(host) === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}
