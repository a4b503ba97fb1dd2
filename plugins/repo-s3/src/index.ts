import type { DependencyContainer, PluginRegistrar } from '@ferry/core/plugin';
import { S3Backend, type S3RepositoryConfig } from './s3-backend.js';

export { S3Backend, isTransient, type S3RepositoryConfig, type S3BackendOptions, type S3RequestCounts } from './s3-backend.js';

const ENV_NAME = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' };

export function register(r: PluginRegistrar): void {
  r.register(
    'repository-backend',
    's3',
    {
      useFactory: (c: DependencyContainer) => new S3Backend(c.resolve(r.tokens.PluginConfig) as S3RepositoryConfig),
    },
    {
      description: 'a repository in an S3 bucket (AWS S3, MinIO, Ceph RGW, Wasabi, Backblaze B2 and other S3-compatible stores)',
      configSchema: {
        type: 'object',
        required: ['bucket'],
        properties: {
          bucket: { type: 'string', minLength: 3, maxLength: 63, pattern: '^[a-z0-9][a-z0-9.-]*[a-z0-9]$' },
          prefix: { type: 'string', pattern: '^([A-Za-z0-9._-]+/)*([A-Za-z0-9._-]+/?)?$' },
          endpoint: { type: 'string', pattern: '^https?://' },
          region: { type: 'string', minLength: 1 },
          forcePathStyle: { type: 'boolean' },
          credentials: {
            oneOf: [
              { type: 'string', enum: ['env', 'profile'] },
              {
                type: 'object',
                additionalProperties: false,
                required: ['accessKeyIdEnv', 'secretAccessKeyEnv'],
                properties: { accessKeyIdEnv: ENV_NAME, secretAccessKeyEnv: ENV_NAME },
              },
            ],
          },
          requests: { type: 'integer', minimum: 1, maximum: 1024 },
          objectLock: { type: 'string', enum: ['auto', 'required', 'off'] },
          objectLockMode: { type: 'string', enum: ['compliance', 'governance'] },
        },
      },
    },
  );
}
