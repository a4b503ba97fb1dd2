import type { JsonSchema } from '../contracts/plugin.js';

import { COMPRESSION_LEVELS, type CompressionLevel } from '../compression/levels.js';

export { COMPRESSION_LEVELS, type CompressionLevel };

export const MIN_BLOCK_SIZE = 256 * 1024;
export const MAX_BLOCK_SIZE = 8 * 1024 * 1024;
export const DEFAULT_BLOCK_SIZE = 1024 * 1024;
/**
 * Disks of a job (across its VMs) backed up at once. Two: the worker pool already uses every core
 * for one disk's hashing and compression, so more disks add no CPU; a second disk overlaps one
 * disk's latency-bound parts (opening, block status, a slow or remote source, the commit) with the
 * other's data, and each disk in flight costs its own read-ahead window (readAhead x blockSize).
 */
export const DEFAULT_PARALLEL_DISKS = 2;
export const MAX_PARALLEL_DISKS = 64;

const NAME = { type: 'string', pattern: '^[A-Za-z0-9][A-Za-z0-9._-]*$', maxLength: 128 };
/** A compressor's level when the job names one (`storage.compression: { compressor, level }`). */
const LEVEL = { type: 'integer', minimum: -1000, maximum: 1000 };
/** `host:port` or `[v6]:port` of a data-mover service. */
const ADDRESS = { type: 'string', ferryAddress: true };

const ENV_NAME = { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' };
const SCRIPT = { type: 'string', minLength: 1, ferryPath: 'file' };

/**
 * A VM's guest processing (`source.vms[i].guest`, docs/job-file.md). Credentials are only named here
 * (a key file, a known_hosts file, an environment variable), never written into the job.
 */
export const GUEST_SCHEMA: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['os'],
  properties: {
    os: { type: 'string', pattern: '^[a-z0-9][a-z0-9._-]*$' },
    via: { enum: ['ssh', 'qga'] },
    agent: { type: 'string', pattern: '^unix:.+' },
    host: { type: 'string', minLength: 1, maxLength: 255 },
    port: { type: 'integer', minimum: 1, maximum: 65535 },
    user: { type: 'string', minLength: 1, maxLength: 64 },
    key: { type: 'string', minLength: 1, ferryPath: 'file' },
    knownHosts: { type: 'string', minLength: 1, ferryPath: 'file' },
    passwordEnv: ENV_NAME,
    // `{ env: NAME }`, the same as passwordEnv; a string here is refused by the loader, naming the key
    password: {
      if: { type: 'object' },
      then: { type: 'object', additionalProperties: false, required: ['env'], properties: { env: ENV_NAME } },
      else: { type: 'string' },
    },
    freeze: { enum: ['auto', 'fsfreeze', 'agent', 'none'] },
    mounts: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
    scripts: {
      type: 'object',
      additionalProperties: false,
      properties: { preFreeze: SCRIPT, postThaw: SCRIPT, postBackup: SCRIPT },
    },
    applications: {
      type: 'array',
      items: {
        if: { type: 'object' },
        then: { type: 'object', required: ['name'], properties: { name: { type: 'string', minLength: 1 } } },
        else: { type: 'string', minLength: 1 },
      },
    },
    vssMode: { enum: ['full', 'copy'] },
    timeoutSeconds: { type: 'integer', minimum: 1, maximum: 86400 },
    onGuestFailure: { enum: ['fail', 'continue'] },
  },
};

/**
 * The job file as the core sees it. `source` and `repository` accept further keys here; the second
 * pass (`composeJobSchema`) closes them with the chosen plugins' own schemas.
 */
export function coreJobSchema(open: boolean): JsonSchema {
  return {
    type: 'object',
    additionalProperties: false,
    required: ['job', 'source', 'repository'],
    properties: {
      job: NAME,
      description: { type: 'string' },
      plugins: { type: 'array', items: { type: 'string', ferryPath: 'directory' } },
      source: {
        type: 'object',
        required: ['host', 'vms'],
        additionalProperties: open,
        properties: {
          host: { type: 'string', minLength: 1 },
          // A list of VMs, or every VM the host has (`all`) or those whose name matches (`{ match: "web*" }`).
          vms: {
            ferryVms: true,
            if: { type: 'array' },
            then: {
              type: 'array',
              minItems: 1,
              items: {
                type: 'object',
                required: ['name'],
                additionalProperties: open,
                properties: {
                  name: NAME,
                  disks: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
                  guest: GUEST_SCHEMA,
                },
              },
            },
            else: {
              if: { type: 'object' },
              then: { type: 'object', additionalProperties: false, required: ['match'], properties: { match: { type: 'string', minLength: 1, maxLength: 256 } } },
            },
          },
        },
      },
      transport: pluginChoice(open),
      proxies: {
        type: 'array',
        minItems: 1,
        items: { type: 'object', additionalProperties: false, required: ['address'], properties: { address: ADDRESS } },
      },
      certs: { type: 'string', ferryPath: 'directory' },
      guestProxies: {
        type: 'array',
        minItems: 1,
        items: { type: 'object', additionalProperties: false, required: ['address'], properties: { address: ADDRESS } },
      },
      // `type` (a repository this process writes) or `server` (a repository service): the loader checks one is there
      repository: {
        type: 'object',
        additionalProperties: open,
        properties: {
          type: { type: 'string', minLength: 1 },
          server: ADDRESS,
          // Core keys of every repository (chosen when it is created; docs/repository-format.md).
          encryption: {
            type: 'object',
            additionalProperties: false,
            minProperties: 1,
            maxProperties: 1,
            properties: {
              passphraseFile: { type: 'string', minLength: 1, ferryPath: 'file' },
              passphraseEnv: { type: 'string', pattern: '^[A-Za-z_][A-Za-z0-9_]*$' },
            },
          },
          immutability: {
            type: 'object',
            additionalProperties: false,
            required: ['days'],
            properties: { days: { type: 'integer', minimum: 1, maximum: 36500 } },
          },
        },
      },
      storage: {
        type: 'object',
        additionalProperties: false,
        properties: {
          blockSize: { type: ['string', 'integer'], ferrySize: true },
          compression: compressionChoice(),
          parallelDisks: { type: 'integer', minimum: 1, maximum: MAX_PARALLEL_DISKS },
        },
      },
      parallelDisks: { type: 'integer', minimum: 1, maximum: MAX_PARALLEL_DISKS },
      filters: { type: 'array', items: pluginChoice(open) },
      retention: {
        type: 'object',
        additionalProperties: false,
        required: ['restorePoints'],
        properties: {
          restorePoints: { type: 'integer', minimum: 1 },
          weekly: { type: 'integer', minimum: 0 },
          monthly: { type: 'integer', minimum: 0 },
          yearly: { type: 'integer', minimum: 0 },
        },
      },
      // Repository YAML files each new restore point is copied to after the session (`ferry copy`).
      copyTo: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1, ferryPath: 'file' } },
      verify: {
        type: 'object',
        additionalProperties: false,
        properties: {
          afterBackup: { type: 'boolean' },
          sample: { type: ['string', 'number'], ferryPercent: true },
        },
      },
    },
  };
}

/**
 * A plugin chosen by name (`nbd`) or by a mapping of its name and options (`{ name: nbd, tls: ... }`).
 * First pass: any options; `pluginOptions` closes a mapping with the plugin's `configSchema`.
 */
function pluginChoice(open: boolean): JsonSchema {
  return {
    if: { type: 'object' },
    then: { type: 'object', required: ['name'], additionalProperties: open, properties: { name: { type: 'string', minLength: 1 } } },
    else: { type: 'string', minLength: 1 },
  };
}

/** A level name, or `{ compressor, level }` naming any registered compressor. */
function compressionChoice(): JsonSchema {
  return {
    if: { type: 'object' },
    then: { type: 'object', required: ['compressor'], additionalProperties: false, properties: { compressor: NAME, level: LEVEL } },
    else: { enum: [...COMPRESSION_LEVELS] },
  };
}

/** Schemas of the plugins a job chose, found before the second pass (`JobFile.complete`). */
export interface PluginSchemas {
  sourceConfig?: JsonSchema;
  sourceVm?: JsonSchema;
  repository?: JsonSchema;
  /** The named transport's options (a mapping `transport:`); absent for `auto` or a plain name. */
  transport?: JsonSchema;
  /** Per item of `filters:`, the filter's options. */
  filters?: (JsonSchema | undefined)[];
  /** The compressor named by `storage.compression: { compressor }`: only its `level` applies. */
  compressor?: JsonSchema;
}

/** Merges plugin schemas (object schemas: `properties`, `required`) into the core's closed sections. */
export function composeJobSchema(schemas: PluginSchemas, raw: Record<string, unknown> = {}): JsonSchema {
  const schema = coreJobSchema(false) as { properties: Record<string, Record<string, unknown>> };
  const src = schema.properties.source as { properties: Record<string, unknown>; required: string[] };
  merge(src, schemas.sourceConfig);
  const vmItems = (src.properties.vms as { then: { items: { properties: Record<string, unknown>; required: string[] } } }).then.items;
  merge(vmItems, schemas.sourceVm);
  merge(schema.properties.repository as { properties: Record<string, unknown>; required: string[] }, schemas.repository);
  merge(pluginMapping(schema.properties.transport), schemas.transport);
  // Each item its own schema (draft-07 tuple form): two filters take different options.
  const filters = Array.isArray(raw.filters) ? raw.filters : [];
  if (filters.length) {
    schema.properties.filters.items = filters.map((_f, i) => {
      const item = pluginChoice(false);
      merge(pluginMapping(item), schemas.filters?.[i]);
      return item;
    });
  }
  const level = (schemas.compressor?.properties as Record<string, unknown> | undefined)?.level;
  if (level) {
    const storage = schema.properties.storage as { properties: Record<string, JsonSchema> };
    merge(pluginMapping(storage.properties.compression), { properties: { level } });
  }
  return schema;
}

function pluginMapping(choice: JsonSchema): { properties: Record<string, unknown>; required: string[] } {
  return choice.then as { properties: Record<string, unknown>; required: string[] };
}

function merge(target: { properties: Record<string, unknown>; required: string[] }, extra: JsonSchema | undefined): void {
  if (!extra) return;
  const props = (extra.properties ?? {}) as Record<string, unknown>;
  // A plugin may narrow a core key (the file host keeps `disks` inside its datastore): both apply.
  for (const [k, v] of Object.entries(props)) target.properties[k] = k in target.properties ? { allOf: [target.properties[k], v] } : v;
  const req = (extra.required ?? []) as string[];
  target.required = [...new Set([...(target.required ?? []), ...req])];
}
