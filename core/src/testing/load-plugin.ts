import path from 'node:path';
import { Ajv } from 'ajv';
import { registerBuiltins } from '../builtin.js';
import type { PluginKind, PluginKindMap } from '../contracts/plugin.js';
import { FerryError } from '../errors.js';
import { PluginHost } from '../plugins/plugin-host.js';

/**
 * Loads the plugin package in `folder` (or the packages a folder holds) through the core's real
 * plugin host, as a job's `plugins:` folder would be, and builds its `kind` `name` with `options`
 * as the job section: the manifest and API version are checked, `register` runs, the required
 * members are checked and the hooks come back guarded, exactly as a session gets them. `options`
 * are validated against the registered `configSchema` (JSON Schema only: `ferryPath` keys are
 * not resolved) and refused with `JOB_INVALID` naming the key; without a schema none are taken.
 */
export async function loadPluginForTest<K extends PluginKind>(
  folder: string,
  kind: K,
  name: string,
  options: Record<string, unknown> = {},
): Promise<PluginKindMap[K]> {
  const dir = path.resolve(folder);
  // The folder is the only place searched besides the core's built-ins (whose names it may not shadow).
  const host = await PluginHost.create({ jobDirs: [dir], installRoot: path.join(dir, '.ferry-no-install-root') }, registerBuiltins);
  const where = { file: path.join(dir, 'package.json') };
  const reg = await host.registration(kind, name, where);
  const config = validOptions(reg.options.configSchema, options, `${kind} "${name}"`);
  return host.create(kind, name, host.container, config, where);
}

function validOptions(schema: Record<string, unknown> | undefined, options: Record<string, unknown>, what: string): Record<string, unknown> {
  const keys = Object.keys(options);
  if (!schema) {
    if (keys.length) throw new FerryError('JOB_INVALID', `${what} declares no configSchema, so it takes no options (given: ${keys.join(', ')})`, {});
    return {};
  }
  const config = structuredClone(options);
  const validate = new Ajv({ strict: false, allErrors: true, useDefaults: true }).compile({ additionalProperties: false, ...schema });
  if (!validate(config)) {
    const first = validate.errors![0];
    const at = `options${first.instancePath.replace(/\//g, '.')}`;
    throw new FerryError('JOB_INVALID', `${at} ${first.message ?? 'is invalid'} (${what}'s configSchema)`, { path: at });
  }
  return config;
}
