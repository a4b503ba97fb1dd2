import { createRequire } from 'node:module';
import type * as Yaml from 'yaml';
import type * as AjvLib from 'ajv';

const load = createRequire(import.meta.url);
let yaml: typeof Yaml | undefined;
let ajv: typeof AjvLib | undefined;

/**
 * The yaml and ajv packages, loaded on first use (the same CommonJS modules an import would load):
 * a command that reads no job file (`plugins`, `certs`, the services) does not pay the ~0.09 core-s
 * of loading them.
 */
export function yamlLib(): typeof Yaml {
  return (yaml ??= load('yaml') as typeof Yaml);
}

export function ajvLib(): typeof AjvLib {
  return (ajv ??= load('ajv') as typeof AjvLib);
}
