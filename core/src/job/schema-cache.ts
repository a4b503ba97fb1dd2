import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { ErrorObject, KeywordCxt } from 'ajv';
import type { JsonSchema } from '../contracts/plugin.js';
import { cacheRoot } from '../repository/index-cache.js';
import { ajvLib } from './yaml-lib.js';
import { readCacheFile, writeCacheFile } from './cache-file.js';

/**
 * A keyword of Ferry's own (`ferryPath`, `ferrySize`, ...), validated by a function that the
 * validator finds on its `this` (`validate.call(keywords, data)`), so the generated code holds no
 * reference to a function of this process and can be stored and reused by the next one.
 */
export interface ContextKeyword {
  keyword: string;
  schemaType?: 'string' | 'boolean';
  /** The function may replace the value in its parent (the value is read back after the call). */
  modifying?: boolean;
  error?: { message: string };
}

/** What a keyword's function gets, as Ajv's `validate` keywords do. */
export type KeywordFunction = (
  schema: unknown,
  data: unknown,
  parentSchema: unknown,
  ctx: { instancePath: string; parentData: unknown; parentDataProperty: string | number; rootData: unknown },
) => boolean;

export interface SchemaValidator {
  (this: Record<string, KeywordFunction>, data: unknown): boolean;
  errors?: ErrorObject[] | null;
}

/** Ajv's options for job files: the first error only, with its schema (the loader names allowed keys). */
const OPTIONS = { allErrors: false, strict: false, useDefaults: false, verbose: true, passContext: true, code: { optimize: false, source: true } } as const;
/** Bumped when the generated code's contract with `KeywordFunction` or the loader changes. */
const CACHE_FORMAT = 1;
const memory = new Map<string, SchemaValidator>();
const requireHere = createRequire(import.meta.url);

/**
 * A validator for `schema` with `keywords`. Ajv compiles a schema into JavaScript, which costs a
 * job file's load ~0.1 core-s (loading Ajv, compiling the job schema twice); the code depends only
 * on the schema, the keywords and Ajv's version, so it is kept in `<cache root>/schemas/` (as
 * `cacheRoot`: `$FERRY_CACHE_DIR`, `$XDG_CACHE_HOME/ferry` or `~/.cache/ferry`), named by the
 * SHA-256 of all three, and reused by the next process without loading Ajv. A file is used only
 * when its own SHA-256 line matches, it belongs to this user and no one else may write it; anything
 * else (a missing or unwritable folder, a damaged file) costs the compile, never correctness.
 */
export function compileSchema(schema: JsonSchema, keywords: readonly ContextKeyword[], env: NodeJS.ProcessEnv = process.env): SchemaValidator {
  const key = createHash('sha256')
    .update(JSON.stringify({ format: CACHE_FORMAT, ajv: ajvVersion(), options: OPTIONS, keywords, schema }))
    .digest('hex');
  const file = path.join(cacheRoot(env), 'schemas', `${key}.cjs`);
  const known = memory.get(file);
  if (known) return known;
  let validate = readCached(file);
  if (!validate) {
    const { code, fn } = generate(schema, keywords);
    validate = fn;
    writeCached(file, code);
  }
  memory.set(file, validate);
  return validate;
}

let version: string | undefined;
function ajvVersion(): string {
  // The version from its package.json: reading it does not load Ajv.
  return (version ??= (JSON.parse(readFileSync(requireHere.resolve('ajv/package.json'), 'utf8')) as { version: string }).version);
}

function generate(schema: JsonSchema, keywords: readonly ContextKeyword[]): { code: string; fn: SchemaValidator } {
  const lib = ajvLib();
  const { _, nil } = lib;
  const { callValidateCode } = requireHere('ajv/dist/vocabularies/code') as {
    callValidateCode: (cxt: KeywordCxt, func: unknown, context: unknown, passSchema?: boolean) => unknown;
  };
  const standaloneCode = (requireHere('ajv/dist/standalone') as { default: (ajv: unknown, fn: unknown) => string }).default;
  const ajv = new lib.Ajv(OPTIONS);
  for (const k of keywords) {
    ajv.addKeyword({
      keyword: k.keyword,
      ...(k.schemaType && { schemaType: k.schemaType }),
      ...(k.error && { error: k.error }),
      code(cxt: KeywordCxt) {
        const { gen, data, it } = cxt;
        const valid = gen.const('valid', callValidateCode(cxt, _`this[${k.keyword}]`, nil, true) as never);
        // as Ajv does for a modifying `validate` keyword: later keywords see the new value
        if (k.modifying) gen.if(it.parentData, () => gen.assign(data, _`${it.parentData}[${it.parentDataProperty}]`));
        cxt.pass(valid);
      },
    });
  }
  const fn = ajv.compile(schema) as unknown as SchemaValidator;
  return { code: standaloneCode(ajv, fn), fn };
}

function readCached(file: string): SchemaValidator | undefined {
  const body = readCacheFile(file);
  if (body === undefined) return undefined;
  try {
    const mod = { exports: {} as unknown };
    // eslint-disable-next-line @typescript-eslint/no-implied-eval -- Ajv's own generated code, as Ajv itself evaluates it
    new Function('module', 'exports', 'require', body)(mod, mod.exports, requireHere);
    return typeof mod.exports === 'function' ? (mod.exports as SchemaValidator) : undefined;
  } catch {
    return undefined;
  }
}

/** Validators kept at most: each job's set of plugins and each Ferry or Ajv version adds its own. */
const KEEP = 100;

function writeCached(file: string, code: string): void {
  writeCacheFile(file, code, KEEP);
}
