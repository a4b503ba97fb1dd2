import { existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import path from 'node:path';
import { isApiCompatible, supportedApiRange, CORE_API_VERSION } from '../api-version.js';
import { PLUGIN_KINDS, type PluginKind, type PluginManifest } from '../contracts/plugin.js';
import { FerryError } from '../errors.js';

/**
 * Where a plugin package was found; the first source in this order wins a name clash, except for
 * the kinds in `FORMAT_KINDS`.
 */
export type PluginSource = 'job' | 'env' | 'workspace' | 'node_modules';

/**
 * Kinds whose implementation names are written into the repository format (a compressor's name is
 * in every block it stores). Such a name means one format for every job and every reader, so it is
 * never shadowed: the core's own implementations and the installed packages (workspace, then
 * node_modules) win, and a package from `FERRY_PLUGIN_PATH` or a job's `plugins:` that declares the
 * same name is refused whichever folder it is in.
 */
export const FORMAT_KINDS: readonly PluginKind[] = ['compressor'];

/** Search order for packages that provide a `FORMAT_KINDS` name: installed before per-user or per-job. */
const FORMAT_SOURCE_ORDER: PluginSource[] = ['workspace', 'node_modules', 'env', 'job'];

export interface DiscoveredPlugin {
  packageName: string;
  version: string;
  dir: string;
  source: PluginSource;
  manifest: PluginManifest;
}

export interface RefusedPlugin {
  packageName: string;
  version?: string;
  dir: string;
  source: PluginSource;
  /** Present when the manifest itself was readable (the refusal is about version or a clash). */
  manifest?: PluginManifest;
  error: FerryError;
}

export interface DiscoveryResult {
  plugins: DiscoveredPlugin[];
  refused: RefusedPlugin[];
}

export interface DiscoveryOptions {
  /** Folders from the job file's `plugins:` key (absolute). */
  jobDirs?: string[];
  /** `FERRY_PLUGIN_PATH` (colon-separated). */
  envPath?: string;
  /** Ferry's installation root: its `plugins/` and `node_modules/` are searched. */
  installRoot: string;
  /** More `node_modules` folders to search (for example the current directory's). */
  nodeModules?: string[];
}

/**
 * Finds plugin packages by reading package.json files only: no plugin code runs here.
 * A folder named in `jobDirs`/`envPath` may be a plugin package itself or hold plugin packages.
 */
export function discoverPlugins(
  opts: DiscoveryOptions,
  /** `kind:name` keys the core registers itself (never shadowed when the kind is in `FORMAT_KINDS`). */
  reserved: string[] = [],
): DiscoveryResult {
  const candidates: { dir: string; source: PluginSource }[] = [];
  for (const d of opts.jobDirs ?? []) candidates.push(...packageDirsIn(d, 'job'));
  for (const d of (opts.envPath ?? '').split(path.delimiter).filter(Boolean)) {
    candidates.push(...packageDirsIn(path.resolve(d), 'env'));
  }
  candidates.push(...childPackages(path.join(opts.installRoot, 'plugins'), 'workspace'));
  const nodeModules = [path.join(opts.installRoot, 'node_modules'), ...(opts.nodeModules ?? [])];
  for (const nm of nodeModules) candidates.push(...nodeModulePackages(nm));

  const seenDirs = new Set<string>();
  const read: Read[] = [];
  for (const c of candidates) {
    const real = safeRealpath(c.dir);
    if (seenDirs.has(real)) continue;
    seenDirs.add(real);
    read.push(readCandidate(c));
  }
  // Packages that provide a format name are settled first, installed ones before per-job ones, so
  // a job's folder can never take such a name from an installed package. Listing order is kept.
  const order = [
    ...FORMAT_SOURCE_ORDER.flatMap((s) => read.filter((r) => r.formatNames && r.source === s)),
    ...read.filter((r) => !r.formatNames),
  ];
  const result: DiscoveryResult = { plugins: [], refused: [] };
  const byName = new Map<string, DiscoveredPlugin>();
  const byImpl = new Map<string, DiscoveredPlugin>();
  const ranked = new Map<object, number>();
  for (const c of order) {
    if (c.skip) continue;
    const { packageName, version } = c;
    const file = path.join(c.dir, 'package.json');
    let manifest: PluginManifest | undefined;
    const refuse = (error: FerryError): void => {
      const r: RefusedPlugin = { packageName, version, dir: c.dir, source: c.source, manifest, error };
      ranked.set(r, read.indexOf(c));
      result.refused.push(r);
    };
    if (c.error) {
      refuse(c.error);
      continue;
    }
    manifest = c.manifest!;
    if (!isApiCompatible(manifest.apiVersion)) {
      refuse(
        new FerryError(
          'PLUGIN_API_INCOMPATIBLE',
          `plugin ${packageName}@${version} targets core API ${manifest.apiVersion}; this core ` +
            `(API ${CORE_API_VERSION}) supports plugins built for ${supportedApiRange()}`,
          { plugin: packageName, file },
        ),
      );
      continue;
    }
    const found: DiscoveredPlugin = { packageName, version, dir: c.dir, source: c.source, manifest };
    ranked.set(found, read.indexOf(c));
    const sameName = byName.get(packageName);
    if (sameName) {
      refuse(
        new FerryError(
          'PLUGIN_DUPLICATE',
          `plugin package ${packageName} found twice: ${sameName.dir} (${sameName.source}, used) and ` +
            `${c.dir} (${c.source}, refused)`,
          { plugin: packageName, file },
        ),
      );
      continue;
    }
    const builtin = implementations(manifest).find((k) => reserved.includes(k) && isFormatKey(k));
    if (builtin) {
      refuse(new FerryError('PLUGIN_DUPLICATE', `${describeKey(builtin)} is built into the core; ${formatNote(builtin)}`, provideWhere(packageName, file, builtin)));
      continue;
    }
    const clash = implementations(manifest).find((k) => byImpl.has(k));
    if (clash) {
      const other = byImpl.get(clash)!;
      const note = isFormatKey(clash) ? `; ${formatNote(clash)}` : '';
      refuse(
        new FerryError(
          'PLUGIN_DUPLICATE',
          `${clash.replace(':', ' ')} is provided by both ${other.packageName} (${other.dir}, ${other.source}, used) and ` +
            `${packageName} (${c.dir}, ${c.source}, refused)${note}`,
          provideWhere(packageName, file, clash),
        ),
      );
      continue;
    }
    byName.set(packageName, found);
    for (const k of implementations(manifest)) byImpl.set(k, found);
    result.plugins.push(found);
  }
  const byOrder = (a: object, b: object): number => ranked.get(a)! - ranked.get(b)!;
  result.plugins.sort(byOrder);
  result.refused.sort(byOrder);
  return result;
}

/** A candidate folder after reading its package.json (no plugin code runs). */
interface Read {
  dir: string;
  source: PluginSource;
  packageName: string;
  version: string;
  /** Not a Ferry plugin package: nothing to list. */
  skip?: boolean;
  manifest?: PluginManifest;
  error?: FerryError;
  /** Provides a name of a `FORMAT_KINDS` kind. */
  formatNames?: boolean;
}

function readCandidate(c: { dir: string; source: PluginSource }): Read {
  const base = { dir: c.dir, source: c.source, packageName: path.basename(c.dir), version: '0.0.0' };
  const pkg = readPackageJson(c.dir, c.source === 'node_modules');
  if (pkg.error && looksLikePlugin(c.source, pkg.text)) return { ...base, error: pkg.error };
  if (!pkg.json || pkg.json.ferry === undefined) return { ...base, skip: true };
  const packageName = typeof pkg.json.name === 'string' ? pkg.json.name : base.packageName;
  const version = typeof pkg.json.version === 'string' ? pkg.json.version : base.version;
  try {
    const manifest = parseManifest(pkg.json.ferry, packageName, c.dir);
    checkEntry(manifest, packageName, c.dir);
    return { ...base, packageName, version, manifest, formatNames: implementations(manifest).some(isFormatKey) };
  } catch (err) {
    return { ...base, packageName, version, error: err as FerryError };
  }
}

/**
 * A package.json that does not parse is refused (not skipped) in the folders searched for plugins
 * only (job, `FERRY_PLUGIN_PATH`, the installation's `plugins/`); in `node_modules`, where most
 * packages are not plugins, only when its text mentions a `"ferry"` key.
 */
function looksLikePlugin(source: PluginSource, text: string | undefined): boolean {
  return source !== 'node_modules' || /"ferry"\s*:/.test(text ?? '');
}

/** `ferry plugins` runs no plugin code, but an entry module that is not there is known already. */
function checkEntry(manifest: PluginManifest, packageName: string, dir: string): void {
  const entry = path.resolve(dir, manifest.entry);
  if (existsSync(entry)) return;
  throw new FerryError(
    'PLUGIN_MANIFEST_INVALID',
    `plugin ${packageName}: "ferry.entry" names ${entry}, which does not exist (not built yet?)`,
    { plugin: packageName, file: path.join(dir, 'package.json'), path: 'ferry.entry' },
  );
}

function isFormatKey(key: string): boolean {
  return FORMAT_KINDS.some((k) => key.startsWith(`${k}:`));
}

/** `kind:name` as the messages write it: `compressor "zstd"`. */
export function describeKey(key: string): string {
  const i = key.indexOf(':');
  return `${key.slice(0, i)} "${key.slice(i + 1)}"`;
}

function formatNote(key: string): string {
  return `a ${key.slice(0, key.indexOf(':'))}'s name is written into the repository format, so one that is installed is never replaced: give yours another name`;
}

function provideWhere(plugin: string, file: string, key: string): { plugin: string; file: string; path: string } {
  const i = key.indexOf(':');
  return { plugin, file, path: `ferry.provides.${key.slice(0, i)}` };
}

export function implementations(manifest: PluginManifest): string[] {
  const out: string[] = [];
  for (const kind of Object.keys(manifest.provides) as PluginKind[]) {
    for (const name of manifest.provides[kind] ?? []) out.push(`${kind}:${name}`);
  }
  return out;
}

function parseManifest(raw: unknown, packageName: string, dir: string): PluginManifest {
  const where = { plugin: packageName, file: path.join(dir, 'package.json'), path: 'ferry' };
  const bad = (detail: string): FerryError =>
    new FerryError('PLUGIN_MANIFEST_INVALID', `plugin ${packageName}: ${detail}`, where);
  if (typeof raw !== 'object' || raw === null) throw bad('"ferry" must be an object');
  const m = raw as Record<string, unknown>;
  if (typeof m.apiVersion !== 'string' || !/^\d+\.\d+$/.test(m.apiVersion)) {
    throw bad('"ferry.apiVersion" must be a string MAJOR.MINOR, for example "1.0"');
  }
  if (typeof m.entry !== 'string' || m.entry.length === 0) throw bad('"ferry.entry" must name a module');
  if (typeof m.provides !== 'object' || m.provides === null) {
    throw bad('"ferry.provides" must map kinds to lists of names');
  }
  const provides: Partial<Record<PluginKind, string[]>> = {};
  for (const [kind, names] of Object.entries(m.provides as Record<string, unknown>)) {
    if (!(PLUGIN_KINDS as readonly string[]).includes(kind)) {
      throw bad(`unknown kind "${kind}" in "ferry.provides" (kinds: ${PLUGIN_KINDS.join(', ')})`);
    }
    if (!Array.isArray(names) || names.some((n) => typeof n !== 'string' || !/^[a-z0-9][a-z0-9._-]*$/.test(n))) {
      throw bad(`"ferry.provides.${kind}" must be a list of lower-case names`);
    }
    provides[kind as PluginKind] = names as string[];
  }
  return { apiVersion: m.apiVersion, entry: m.entry, provides };
}

/**
 * A folder's package.json: `json` when it parses to an object; `error` (with the file, line and
 * column) when it is there but is not a JSON object; neither when there is none.
 */
function readPackageJson(dir: string, onlyFerry = false): { json?: Record<string, unknown>; text?: string; error?: FerryError } {
  const file = path.join(dir, 'package.json');
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch {
    return {};
  }
  // `onlyFerry` (the node_modules folders, mostly other packages): a text that can hold no "ferry"
  // key (neither the word nor a \u escape) is not parsed, as it is neither a plugin nor refused.
  if (onlyFerry && !text.includes('ferry') && !text.includes('\\u')) return { text };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    const detail = `${path.basename(dir)}/package.json is not valid JSON: ${(err as Error).message}`;
    return { text, error: new FerryError('PLUGIN_MANIFEST_INVALID', detail, { file, ...jsonPosition(text, (err as Error).message) }) };
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return { text, error: new FerryError('PLUGIN_MANIFEST_INVALID', `${path.basename(dir)}/package.json is not a JSON object`, { file }) };
  }
  return { json: value as Record<string, unknown>, text };
}

/** Line and column of a JSON.parse error (its message gives the offset into the text). */
function jsonPosition(text: string, message: string): { line?: number; column?: number } {
  const at = /at position (\d+)/.exec(message);
  if (!at) return {};
  const before = text.slice(0, Number(at[1])).split('\n');
  return { line: before.length, column: before[before.length - 1].length + 1 };
}

function isDir(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function safeRealpath(p: string): string {
  try {
    // the system call: one per folder instead of an lstat per path component
    return realpathSync.native(p);
  } catch {
    return path.resolve(p);
  }
}

function packageDirsIn(dir: string, source: PluginSource): { dir: string; source: PluginSource }[] {
  const pkg = readPackageJson(dir);
  if (pkg.error || pkg.json?.ferry !== undefined) return [{ dir, source }];
  return childPackages(dir, source);
}

function childPackages(dir: string, source: PluginSource): { dir: string; source: PluginSource }[] {
  if (!isDir(dir)) return [];
  return readdirSync(dir)
    .sort()
    .map((n) => path.join(dir, n))
    .filter((p) => isDir(p))
    .map((p) => ({ dir: p, source }));
}

function nodeModulePackages(nm: string): { dir: string; source: PluginSource }[] {
  if (!isDir(nm)) return [];
  const out: { dir: string; source: PluginSource }[] = [];
  for (const n of readdirSync(nm).sort()) {
    if (n.startsWith('.')) continue;
    const p = path.join(nm, n);
    if (n.startsWith('@')) out.push(...childPackages(p, 'node_modules'));
    else if (isDir(p)) out.push({ dir: p, source: 'node_modules' });
  }
  return out;
}
