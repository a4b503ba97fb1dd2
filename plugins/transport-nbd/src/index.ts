import type { PluginRegistrar } from '@ferry/core/plugin';
import { NBD_CONFIG_SCHEMA, NbdTransport, type NbdTransportOptions } from './nbd-transport.js';

export { NBD_CONFIG_SCHEMA, NbdTransport, type NbdTransportOptions, type NbdDiskAccess } from './nbd-transport.js';
export { NbdClient, type NbdClientOptions, type StatusExtent, type BlockSizeConstraints } from './nbd-client.js';
export { NbdServerError } from './nbd-errors.js';
export { parseNbdAddress, formatNbdEndpoint, type NbdEndpoint } from './nbd-address.js';
export { loadTlsCredsDir, loadTlsFiles, type NbdTlsFiles, type NbdTlsOptions } from './nbd-tls.js';
export { NbdDiskHandle } from './nbd-disk-handle.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'transport',
    'nbd',
    // per job: `transport: { name: nbd, tls, connections, ... }` arrives validated as PluginConfig
    { useFactory: (c) => new NbdTransport(c.resolve(r.tokens.PluginConfig) as NbdTransportOptions) },
    {
      description: "nbd: reads the snapshot from the host's NBD export, skipping holes (base:allocation) and reading only dirty-bitmap extents",
      configSchema: NBD_CONFIG_SCHEMA,
    },
  );
}
