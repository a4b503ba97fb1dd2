import type { PluginRegistrar } from '@ferry/core/plugin';
import { LinuxGuestRuntime } from './linux-guest-runtime.js';

export { LinuxGuestRuntime } from './linux-guest-runtime.js';
export { LinuxGuestSession } from './linux-guest-session.js';
export { QgaClient } from '@ferry/guest-common';
export { RUNTIME_SCRIPT } from './runtime-script.js';

export function register(r: PluginRegistrar): void {
  r.register('guest-runtime', 'linux', { useFactory: () => new LinuxGuestRuntime() }, {
    description: 'Linux guests over SSH or the QEMU guest agent: scripts, fsfreeze, PostgreSQL and MySQL quiescing',
  });
}
