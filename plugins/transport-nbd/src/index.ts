import type { PluginRegistrar } from '@ferry/core';
import { NbdTransport } from './nbd-transport.js';

export { NbdTransport, type NbdTransportOptions, type NbdDiskAccess } from './nbd-transport.js';
export { NbdClient, type NbdClientOptions, type StatusExtent, type BlockSizeConstraints } from './nbd-client.js';
export { NbdServerError } from './nbd-errors.js';
export { parseNbdAddress, formatNbdEndpoint, type NbdEndpoint } from './nbd-address.js';
export { loadTlsCredsDir, type NbdTlsOptions } from './nbd-tls.js';
export { NbdDiskHandle } from './nbd-disk-handle.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'transport',
    'nbd',
    { useValue: new NbdTransport() },
    { description: "nbd: reads the snapshot from the host's NBD export, skipping holes (base:allocation) and reading only dirty-bitmap extents" },
  );
}
