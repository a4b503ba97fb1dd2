import type { PluginRegistrar } from '@ferry/core/plugin';
import { WindowsGuestRuntime } from './windows-guest-runtime.js';

export { WindowsGuestRuntime } from './windows-guest-runtime.js';
export { WindowsGuestSession } from './windows-guest-session.js';
export { RUNTIME_PS1 } from './runtime-script.js';

export function register(r: PluginRegistrar): void {
  r.register('guest-runtime', 'windows', { useFactory: () => new WindowsGuestRuntime() }, {
    description: 'Windows guests over OpenSSH + PowerShell: VSS snapshot set (full or copy), SQL Server log truncation, pagefile/swapfile/hiberfil extents',
  });
}
