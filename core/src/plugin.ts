/**
 * `@ferry/core/plugin`: everything a plugin author needs and nothing else — the extension-point
 * contracts, `FerryError` and its codes, the DI tokens and decorators, and the core API version.
 * The conformance kits are `@ferry/core/testing`. Nothing here names a session, repository or pipe
 * type, so a plugin built against it does not break when those change (a spec walks this file's
 * `.d.ts` imports to keep it so).
 *
 * Loading it costs little in a worker thread: the worker has loaded these modules (and tsyringe)
 * already to register compressors, unlike the whole `@ferry/core` index (~0.15 s per thread).
 */
import 'reflect-metadata';

export { injectable, inject, type DependencyContainer, type InjectionToken } from 'tsyringe';
export { CORE_API_VERSION, isApiCompatible, supportedApiRange } from './api-version.js';
export { ERROR_CODES, FerryError, isFerryError, type ErrorCode, type ErrorLocation } from './errors.js';
export { Tokens } from './tokens.js';
export type * from './contracts/extent.js';
export type * from './contracts/source-host.js';
export type * from './contracts/transport.js';
export type * from './contracts/block-filter.js';
export type * from './contracts/compressor.js';
export type * from './contracts/repository-backend.js';
export type * from './contracts/guest-runtime.js';
export {
  PLUGIN_KINDS,
  type ImplementationProvider,
  type JsonSchema,
  type PluginKind,
  type PluginKindMap,
  type PluginManifest,
  type PluginModule,
  type PluginRegistrar,
  type RegistrationOptions,
} from './contracts/plugin.js';
export type { DocPath, JobContext } from './job/job-context.js';
export { isJobTrackingName, trackingName } from './contracts/tracking-names.js';
