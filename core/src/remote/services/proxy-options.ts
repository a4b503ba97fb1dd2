import { Ajv, type ErrorObject } from 'ajv';
import type { JsonSchema } from '../../contracts/plugin.js';
import { FerryError, type ErrorLocation } from '../../errors.js';
import { addFerryPathKeyword, pathExists } from '../../job/ferry-path.js';
import type { PluginOptions } from './protocol.js';

/** Which options are checked: where they sit in the job, and the implementation they configure. */
export interface OptionsOf {
  /** `transport` or `filters[1]`, as the job file spells the place. */
  path: string;
  /** `block-filter "marker"`, for the message. */
  what: string;
  /** The package that provides the implementation on this proxy. */
  plugin: string;
}

/**
 * Checks a read task's options against the `configSchema` of the plugin installed on this proxy,
 * which may be another version than the one the backup server validated them with. The rules are
 * the job loader's: keys the schema does not name are refused, no defaults are added, and `ferryPath`
 * values (made absolute by the job loader) must name a file or folder that exists on this host.
 * Returns a copy for the plugin's factory (`Tokens.PluginConfig`); a refusal is REMOTE_PLUGIN_OPTIONS
 * naming the proxy's plugin and the key.
 */
export function proxyPluginOptions(schema: JsonSchema | undefined, given: PluginOptions | undefined, of: OptionsOf, where: ErrorLocation = {}): PluginOptions {
  const options = structuredClone(given ?? {});
  const at = { ...where, plugin: of.plugin };
  const refuse = (key: string, problem: string): FerryError =>
    new FerryError('REMOTE_PLUGIN_OPTIONS', `this proxy's ${of.plugin} (${of.what}) refuses the job's ${key}: ${problem}`, { ...at, path: key });
  if (!schema) {
    const keys = Object.keys(options);
    if (keys.length) throw refuse(`${of.path}.${keys[0]}`, `its version here declares no configSchema, so it takes no options`);
    return options;
  }
  const missing: { key: string; problem: string }[] = [];
  const ajv = new Ajv({ allErrors: false, strict: false, useDefaults: false });
  // Paths arrive absolute (the job loader resolved them); they must exist on this host.
  addFerryPathKeyword(ajv, process.cwd(), (kind, resolved, pointer) => {
    if ((kind === 'directory' || kind === 'file') && !pathExists(resolved, kind)) {
      missing.push({ key: `${of.path}${keyPath(pointer)}`, problem: `${kind} not found on the proxy host: ${resolved}` });
    }
  });
  // The job's plugin sections are closed whatever the plugin's schema says (`composeJobSchema`).
  const validate = ajv.compile({ type: 'object', ...schema, additionalProperties: false });
  if (!validate(options)) {
    const e = validate.errors![0];
    throw refuse(...schemaProblem(of.path, e, schema));
  }
  if (missing.length) throw refuse(missing[0].key, missing[0].problem);
  return options;
}

function schemaProblem(base: string, e: ErrorObject, schema: JsonSchema): [string, string] {
  const at = `${base}${keyPath(e.instancePath)}`;
  const p = e.params as Record<string, unknown>;
  if (e.keyword === 'additionalProperties') {
    const allowed = Object.keys((e.parentSchema?.properties as object | undefined) ?? (schema.properties as object | undefined) ?? {});
    return [`${at}.${String(p.additionalProperty)}`, `unknown key; its version here allows: ${allowed.join(', ') || 'no keys'}`];
  }
  if (e.keyword === 'required') return [`${at}.${String(p.missingProperty)}`, 'missing key (its version here requires it)'];
  return [at, e.message ?? 'is invalid'];
}

/** `/tls/ca` → `.tls.ca`, `/list/0` → `.list[0]`. */
function keyPath(pointer: string): string {
  return pointer
    .split('/')
    .slice(1)
    .map((k) => k.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((k) => (/^\d+$/.test(k) ? `[${k}]` : `.${k}`))
    .join('');
}
