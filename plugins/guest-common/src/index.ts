/**
 * `@ferry/guest-common`: what the guest runtimes (`@ferry/guest-linux`, `@ferry/guest-windows`) share
 * to reach a guest: the SSH connection (host key checked against known_hosts) and the QEMU guest
 * agent's JSON protocol client. Not a plugin (its package.json has no `ferry` key): a library both
 * plugins import, so these exist once.
 */
export { MAX_OUTPUT, OutputTail, shellLine, type ExecOptions, type ExecResult, type GuestChannel, type HeldCommand } from './guest-channel.js';
export { checkHostKey, keysFor } from './known-hosts.js';
export { SshChannel, type SshTarget } from './ssh-channel.js';
export { openQga, QgaClient, type QgaConnection } from './qga-client.js';
