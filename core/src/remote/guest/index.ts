/**
 * The guest interaction proxy (issue 13): `ferry guest-proxy serve` runs the guest runtimes' steps
 * for backup servers that cannot reach the guests themselves (`guestProxies:` in a job). Messages:
 * `guest-wire.ts`; the wire layer below is `../wire`.
 */
export { startGuestProxyService, GuestProxyService, type GuestProxyConfig, type RunningGuestProxy } from './guest-proxy-service.js';
export { RemoteGuestRuntime } from './remote-guest-runtime.js';
export { GUEST_METHODS, type GuestMethod } from './guest-wire.js';
