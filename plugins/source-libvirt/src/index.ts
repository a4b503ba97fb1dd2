import type { DependencyContainer, JobContext, PluginRegistrar } from '@ferry/core/plugin';
import { LibvirtSourceHost, type LibvirtSourceConfig } from './libvirt-source-host.js';

export { LibvirtSourceHost, DEFAULT_URI, type LibvirtSourceConfig } from './libvirt-source-host.js';
export { Virsh } from './virsh.js';
export { LibvirtAgentChannel } from './agent-channel.js';
export { sessionFiles } from './chain.js';
export { parseDomain, parseCheckpoint, parseBackupJob, type DomainInfo, type DomainDisk } from './libvirt-xml.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'source-host',
    'libvirt',
    {
      useFactory: (c: DependencyContainer) =>
        new LibvirtSourceHost(c.resolve(r.tokens.PluginConfig) as unknown as LibvirtSourceConfig, c.resolve(r.tokens.JobContext) as JobContext),
    },
    {
      description: 'libvirt domains through virsh: checkpoints and pull-mode backups over NBD for running domains, images at rest for shut-off ones',
      configSchema: {
        type: 'object',
        properties: {
          uri: { type: 'string', minLength: 1 },
          scratchDir: { type: 'string', minLength: 1, ferryPath: 'directory' },
          nbd: {
            type: 'object',
            additionalProperties: false,
            required: ['host', 'port'],
            properties: { host: { type: 'string', minLength: 1 }, port: { type: 'integer', minimum: 1, maximum: 65535 }, tls: { type: 'boolean' } },
          },
        },
      },
    },
  );
}
