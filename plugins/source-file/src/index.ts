import type { DependencyContainer, JobContext, PluginRegistrar } from '@ferry/core/plugin';
import { FileSourceHost, type FileSourceConfig } from './file-source-host.js';

export { FileSourceHost } from './file-source-host.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'source-host',
    'file',
    {
      useFactory: (c: DependencyContainer) =>
        new FileSourceHost(c.resolve(r.tokens.PluginConfig) as unknown as FileSourceConfig, c.resolve(r.tokens.JobContext) as JobContext),
    },
    {
      description: 'disk images at rest (raw, qcow2, block devices) in a datastore folder',
      configSchema: {
        type: 'object',
        required: ['datastore'],
        properties: { datastore: { type: 'string', minLength: 1, ferryPath: 'directory' } },
      },
      // Disks are named relative to the datastore and must stay inside it (symbolic links followed).
      vmSchema: {
        type: 'object',
        properties: { disks: { type: 'array', items: { type: 'string', ferryPathIn: '/source/datastore' } } },
      },
    },
  );
}
