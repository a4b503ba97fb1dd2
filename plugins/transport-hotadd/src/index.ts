import type { PluginRegistrar } from '@ferry/core/plugin';
import { HotaddTransport } from './hotadd-transport.js';

export { HotaddTransport, type HotaddOptions } from './hotadd-transport.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'transport',
    'hotadd',
    { useValue: new HotaddTransport() },
    { description: "hot-add: opens the snapshot's raw image, block device or qcow2 image (with its backing chain) on the datastore, skipping holes" },
  );
}
