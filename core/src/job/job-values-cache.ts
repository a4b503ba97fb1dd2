import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheRoot } from '../repository/index-cache.js';
import { readCacheFile, writeCacheFile } from './cache-file.js';

/**
 * The values of job files that parsed and passed the YAML checks (unique keys, bounded aliases),
 * kept as JSON in `<cache root>/jobs/`, named by the SHA-256 of the file's text, the yaml package's
 * version and the code that reads it: a later run of the same file skips loading and running the
 * YAML parser (~0.04 core-s). Errors still name file:line:column: the job loader parses the text
 * again when it needs a position. Only values that JSON keeps exactly are stored; a file that is
 * not this user's, is writable by others, or does not match its SHA-256 line is not used.
 */
const FORMAT = 1;
const here = createRequire(import.meta.url);
let codeKey: string | undefined;

/** What decides the values besides the text: the parser's version and the reading code. */
function readerKey(): string {
  if (codeKey) return codeKey;
  const h = createHash('sha256').update(`jobs-${FORMAT}`);
  h.update((JSON.parse(readFileSync(here.resolve('yaml/package.json'), 'utf8')) as { version: string }).version);
  for (const m of ['./job-loader.js', './yaml-limits.js']) h.update(readFileSync(fileURLToPath(new URL(m, import.meta.url))));
  return (codeKey = h.digest('hex'));
}

function fileFor(text: string, env: NodeJS.ProcessEnv): string {
  const key = createHash('sha256').update(readerKey()).update('\0').update(text).digest('hex');
  return path.join(cacheRoot(env), 'jobs', `${key}.json`);
}

/** What was kept for `text`: its values and the positions the loader stored with them. */
export function cachedJobValues(text: string, env: NodeJS.ProcessEnv = process.env): { values: unknown; positions: unknown } | undefined {
  try {
    const body = readCacheFile(fileFor(text, env));
    return body === undefined ? undefined : (JSON.parse(body) as { values: unknown; positions: unknown });
  } catch {
    return undefined;
  }
}

/** Job files kept at most (the oldest go first, only after a new one is written). */
const KEEP = 200;

export function keepJobValues(text: string, values: unknown, positions: unknown, env: NodeJS.ProcessEnv = process.env): void {
  if (!jsonExact(values)) return;
  try {
    writeCacheFile(fileFor(text, env), JSON.stringify({ values, positions }), KEEP);
  } catch {
    // a cache root that cannot be found or a value JSON refuses: the next run parses again
  }
}

/** Whether JSON gives `v` back exactly (no NaN, infinities or -0; plain objects and arrays only). */
function jsonExact(v: unknown, depth = 0): boolean {
  if (depth > 200) return false;
  if (v === null || typeof v === 'string' || typeof v === 'boolean') return true;
  if (typeof v === 'number') return Number.isFinite(v) && !Object.is(v, -0);
  if (Array.isArray(v)) return v.every((x) => jsonExact(x, depth + 1));
  if (typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype) {
    return Object.entries(v as Record<string, unknown>).every(([k, x]) => k !== '__proto__' && jsonExact(x, depth + 1));
  }
  return false;
}
