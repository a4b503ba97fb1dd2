import type { InjectionToken } from 'tsyringe';
import type { PluginKind } from './contracts/plugin.js';

/** Dependency-injection tokens, all in one place. */
export const Tokens = {
  /** The validated job-file section of the implementation being built (value: object). */
  PluginConfig: 'ferry.PluginConfig' as InjectionToken<Record<string, unknown>>,
  /** The running job (value: JobContext). */
  JobContext: 'ferry.JobContext' as InjectionToken<unknown>,
} as const;

/** Token under which an implementation of `kind` called `name` is registered. */
export function implementationToken(kind: PluginKind, name: string): string {
  return `ferry.${kind}.${name}`;
}
