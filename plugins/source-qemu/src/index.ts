import type { DependencyContainer, JobContext, PluginRegistrar } from '@ferry/core/plugin';
import { QemuSourceHost } from './qemu-source-host.js';
import { SNAPSHOT_MODES } from './snapshot-kind.js';

export { QemuSourceHost, type QemuVmOptions } from './qemu-source-host.js';
export { QmpClient, QmpCommandError, type QmpEvent, type QmpConnectOptions } from './qmp-client.js';
export { bitmapName } from './ferry-names.js';
export type { SnapshotMode } from './snapshot-kind.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'source-host',
    'qemu',
    { useFactory: (c: DependencyContainer) => new QemuSourceHost(c.resolve(r.tokens.JobContext) as JobContext) },
    {
      description: 'running QEMU VMs over QMP: copy-before-write fleecing or external snapshots for hot-add, persistent dirty bitmaps, NBD exports',
      vmSchema: {
        type: 'object',
        properties: {
          qmp: { type: 'string', pattern: '^(unix:.+|tcp:.+:[0-9]+)$' },
          nbd: { type: 'string', pattern: '^(unix:.+|tcp:.+:[0-9]+)$' },
          snapshot: { type: 'string', enum: [...SNAPSHOT_MODES] },
        },
        required: ['qmp'],
      },
    },
  );
}
