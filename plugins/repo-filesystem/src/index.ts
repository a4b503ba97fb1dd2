import type { DependencyContainer, PluginRegistrar } from '@ferry/core/plugin';
import { FilesystemBackend } from './filesystem-backend.js';

export { FilesystemBackend } from './filesystem-backend.js';

export function register(r: PluginRegistrar): void {
  r.register(
    'repository-backend',
    'filesystem',
    {
      useFactory: (c: DependencyContainer) => {
        const config = c.resolve(r.tokens.PluginConfig) as { path: string };
        return new FilesystemBackend(config.path);
      },
    },
    {
      description: 'a repository in a folder on a local or mounted filesystem',
      configSchema: {
        type: 'object',
        required: ['path'],
        properties: { path: { type: 'string', minLength: 1, ferryPath: 'create' } },
      },
    },
  );
}
