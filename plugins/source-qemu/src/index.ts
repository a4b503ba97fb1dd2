import type { DependencyContainer, JobContext, PluginRegistrar } from '@ferry/core';
import { QemuSourceHost } from './qemu-source-host.js';

export { QemuSourceHost, type QemuVmOptions } from './qemu-source-host.js';
export { QmpClient, QmpCommandError, type QmpEvent, type QmpConnectOptions } from './qmp-client.js';
export { bitmapName } from './ferry-names.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'source-host',
    'qemu',
    { useFactory: (c: DependencyContainer) => new QemuSourceHost(c.resolve(r.tokens.JobContext) as JobContext) },
    {
      description: 'running QEMU VMs over QMP: copy-before-write fleecing, persistent dirty bitmaps, NBD exports',
      vmSchema: {
        type: 'object',
        properties: {
          qmp: { type: 'string', pattern: '^(unix:.+|tcp:.+:[0-9]+)$' },
          nbd: { type: 'string', pattern: '^(unix:.+|tcp:.+:[0-9]+)$' },
        },
        required: ['qmp'],
      },
    },
  );
}
