import { createHmac } from 'node:crypto';

/** One known_hosts line that names the host: its key type and key blob (base64). */
interface HostKey {
  type: string;
  key: string;
  revoked: boolean;
}

/**
 * The keys a known_hosts file (OpenSSH format, `sshd(8)` "SSH_KNOWN_HOSTS FILE FORMAT") lists for
 * `host` on `port`: plain names (`host`, `[host]:port` when the port is not 22), comma-separated
 * lists, hashed names (`|1|salt|hmac-sha1`), and `@revoked` lines. `@cert-authority` lines and
 * wildcard patterns are not supported and are ignored.
 */
export function keysFor(text: string, host: string, port: number): HostKey[] {
  const name = port === 22 ? host : `[${host}]:${port}`;
  const out: HostKey[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const words = line.split(/\s+/);
    let marker: string | undefined;
    if (words[0].startsWith('@')) marker = words.shift();
    if (marker === '@cert-authority' || words.length < 3) continue;
    const [hosts, type, key] = words;
    if (hosts.split(',').some((h) => matches(h, name))) out.push({ type, key, revoked: marker === '@revoked' });
  }
  return out;
}

function matches(pattern: string, name: string): boolean {
  if (pattern.startsWith('|1|')) {
    const [, , salt, hash] = pattern.split('|');
    if (!salt || !hash) return false;
    return createHmac('sha1', Buffer.from(salt, 'base64')).update(name).digest('base64') === hash;
  }
  return pattern === name;
}

/**
 * Whether the host key the server presented (its SSH wire blob) is one the file lists for the host,
 * and not revoked: `unknown` (no line for the host), `mismatch` (lines, but none with this key) or
 * `revoked`.
 */
export function checkHostKey(text: string, host: string, port: number, blob: Buffer): 'ok' | 'unknown' | 'mismatch' | 'revoked' {
  const keys = keysFor(text, host, port);
  const presented = blob.toString('base64');
  if (keys.some((k) => k.revoked && k.key === presented)) return 'revoked';
  const listed = keys.filter((k) => !k.revoked);
  if (!listed.length) return 'unknown';
  return listed.some((k) => k.key === presented) ? 'ok' : 'mismatch';
}

/** SSH host key algorithms that present a key of each known_hosts key type. */
const ALGORITHMS: Record<string, string[]> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/**
 * The host key algorithms to offer for `host`: those of the key types the file lists for it (as the
 * OpenSSH client prefers them), so a server with several host keys presents one the file knows.
 * Undefined when the file lists none we know (the connection then fails the check, as it must).
 */
export function hostKeyAlgorithms(text: string, host: string, port: number): string[] | undefined {
  const types = new Set(keysFor(text, host, port).filter((k) => !k.revoked).map((k) => k.type));
  const out = [...types].flatMap((t) => ALGORITHMS[t] ?? []);
  return out.length ? out : undefined;
}
