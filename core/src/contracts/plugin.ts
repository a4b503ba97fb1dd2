import type { DependencyContainer, InjectionToken } from 'tsyringe';
import type { BlockFilter } from './block-filter.js';
import type { Compressor } from './compressor.js';
import type { GuestRuntime } from './guest-runtime.js';
import type { RepositoryBackend } from './repository-backend.js';
import type { SourceHost } from './source-host.js';
import type { Transport } from './transport.js';

/** The extension points, as plugin packages name them in `ferry.provides`. */
export const PLUGIN_KINDS = [
  'source-host',
  'transport',
  'block-filter',
  'compressor',
  'repository-backend',
  'guest-runtime',
] as const;
export type PluginKind = (typeof PLUGIN_KINDS)[number];

export interface PluginKindMap {
  'source-host': SourceHost;
  transport: Transport;
  'block-filter': BlockFilter;
  compressor: Compressor;
  'repository-backend': RepositoryBackend;
  'guest-runtime': GuestRuntime;
}

/**
 * The `ferry` field of a plugin package's package.json. The core reads it without running plugin
 * code, so `ferry plugins` can list (and refuse) packages safely.
 *
 * ```json
 * "ferry": { "apiVersion": "1.0", "entry": "./dist/index.js", "provides": { "transport": ["hotadd"] } }
 * ```
 */
export interface PluginManifest {
  /** Core API version the plugin was built for, `MAJOR.MINOR`. */
  apiVersion: string;
  /** Module (relative to the package folder) whose `register` export is called once at load. */
  entry: string;
  /** Implementation names per kind; the job file refers to them by these names. */
  provides: Partial<Record<PluginKind, string[]>>;
}

/** A JSON Schema (draft 2020-12 subset understood by Ajv) for a plugin's part of the job file. */
export type JsonSchema = Record<string, unknown>;

export interface RegistrationOptions {
  /**
   * Keys the implementation accepts in its job section besides the core's own: `host`/`vms` for a
   * source host (`source:`), `type` for a repository (`repository:`), `name` for a transport
   * (`transport: { name, ... }`) or a block filter (a `filters:` item `{ name, ... }`). The validated
   * section reaches the implementation as `Tokens.PluginConfig`. Compressors: only `properties.level`
   * applies (`storage.compression: { compressor, level }`; its `default` is the level when the job
   * gives none); the level is passed to every `compress` call, in whichever thread. Missing: the
   * section takes no further keys (a compressor's level is any integer, default 0).
   */
  configSchema?: JsonSchema;
  /** Source hosts: keys each entry of `source.vms` accepts besides `name` and `disks`. */
  vmSchema?: JsonSchema;
  /** One line for `ferry plugins`. */
  description?: string;
}

/**
 * How an implementation is built: a tsyringe provider. Classes are resolved in a container that
 * holds `Tokens.PluginConfig` (the validated job section) and `Tokens.JobContext`; factories get that
 * container. Plain-JavaScript plugins without decorators use `useFactory`.
 */
export type ImplementationProvider<T> =
  | { useClass: new (...args: never[]) => T }
  | { useFactory: (container: DependencyContainer) => T }
  | { useValue: T };

/** What a plugin's `register(registrar)` export receives. */
export interface PluginRegistrar {
  /** The package being registered. */
  readonly pluginName: string;
  /** DI tokens shared with the core (see `Tokens`), so a plugin need not import the core at run time. */
  readonly tokens: Readonly<Record<string, InjectionToken<unknown>>>;
  register<K extends PluginKind>(
    kind: K,
    name: string,
    provider: ImplementationProvider<PluginKindMap[K]>,
    options?: RegistrationOptions,
  ): void;
}

/** The shape of a plugin entry module. */
export interface PluginModule {
  register(registrar: PluginRegistrar): void | Promise<void>;
}
