/**
 * `@ferry/guest-ssh`: what the guest runtimes (`@ferry/guest-linux`, `@ferry/guest-windows`) share
 * to reach a guest over SSH. Not a plugin (its package.json has no `ferry` key): a library both
 * plugins import, so the host key check and the command channel exist once.
 */
export { MAX_OUTPUT, OutputTail, shellLine, type ExecResult, type GuestChannel, type HeldCommand } from './guest-channel.js';
export { checkHostKey, keysFor } from './known-hosts.js';
export { SshChannel, type SshTarget } from './ssh-channel.js';
