import 'reflect-metadata';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { container as globalContainer, type DependencyContainer } from 'tsyringe';
import {
  PLUGIN_KINDS,
  type ImplementationProvider,
  type PluginKind,
  type PluginKindMap,
  type PluginModule,
  type PluginRegistrar,
  type RegistrationOptions,
} from '../contracts/plugin.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import { Tokens, implementationToken } from '../tokens.js';
import { guardPlugin, requireMembers } from './plugin-guard.js';
import {
  describeKey,
  discoverPlugins,
  FORMAT_KINDS,
  implementations,
  type DiscoveredPlugin,
  type DiscoveryOptions,
  type DiscoveryResult,
  type RefusedPlugin,
} from './discovery.js';

export const BUILTIN_PACKAGE = '@ferry/core';

export interface Registration {
  kind: PluginKind;
  name: string;
  plugin: string;
  options: RegistrationOptions;
}

/**
 * Knows every discovered plugin package, imports a package the first time a job needs one of its
 * implementations, and builds implementations in a job's DI container.
 */
export class PluginHost {
  readonly container: DependencyContainer;
  private readonly registrations = new Map<string, Registration>();
  private readonly loading = new Map<string, Promise<void>>();

  private constructor(
    readonly discovery: DiscoveryResult,
    /** How the plugins were found (worker threads repeat the discovery with it). */
    readonly options: DiscoveryOptions,
  ) {
    this.container = globalContainer.createChildContainer();
  }

  static async create(
    opts: DiscoveryOptions,
    builtins: (r: PluginRegistrar) => void,
  ): Promise<PluginHost> {
    const host = new PluginHost(discoverPlugins(opts, builtinKeys(builtins)), opts);
    builtins(host.registrar(BUILTIN_PACKAGE));
    return host;
  }

  /** Every implementation name of `kind` that a job may use, with the package providing it. */
  available(kind: PluginKind): { name: string; plugin: string }[] {
    const out = new Map<string, string>();
    for (const r of this.registrations.values()) if (r.kind === kind) out.set(r.name, r.plugin);
    for (const p of this.discovery.plugins) {
      for (const n of p.manifest.provides[kind] ?? []) if (!out.has(n)) out.set(n, p.packageName);
    }
    return [...out].map(([name, plugin]) => ({ name, plugin })).sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * The packages that provide an implementation of `kind`, unordered: without `available`'s sort,
   * whose first `localeCompare` loads ICU's collation (~10-40 ms) into a process that needs none.
   */
  providers(kind: PluginKind): Set<string> {
    const out = new Set<string>();
    for (const r of this.registrations.values()) if (r.kind === kind) out.add(r.plugin);
    for (const p of this.discovery.plugins) if (p.manifest.provides[kind]?.length) out.add(p.packageName);
    return out;
  }

  /** The package that provides `kind` `name` (for error messages); the name itself if unknown. */
  providerOf(kind: PluginKind, name: string): string {
    return this.registrations.get(`${kind}:${name}`)?.plugin ?? name;
  }

  /**
   * The registration of `kind` `name`, importing its package if needed. A job that selects a
   * format name (`FORMAT_KINDS`) another package was refused for is refused with that package's
   * `PLUGIN_DUPLICATE`: the job meant the refused one, and must not silently get the installed one.
   */
  async registration(kind: PluginKind, name: string, where: ErrorLocation = {}): Promise<Registration> {
    const shadow = FORMAT_KINDS.includes(kind) && this.refusedFor(`${kind}:${name}`, 'PLUGIN_DUPLICATE');
    if (shadow) throw new FerryError(shadow.error.code, shadow.error.detail, { ...shadow.error.where, ...where, plugin: shadow.packageName });
    return this.lookup(kind, name, where);
  }

  /**
   * Like `registration`, without refusing a contested format name: reading blocks always uses the
   * installed implementation, which wrote them (a refused one never writes).
   */
  private async lookup(kind: PluginKind, name: string, where: ErrorLocation): Promise<Registration> {
    const key = `${kind}:${name}`;
    const known = this.registrations.get(key);
    if (known) return known;
    const pkg = this.discovery.plugins.find((p) => implementations(p.manifest).includes(key));
    if (!pkg) throw this.notFound(kind, name, where);
    await this.load(pkg);
    const reg = this.registrations.get(key);
    if (!reg) throw new FerryError('INTERNAL', `${key} missing after loading ${pkg.packageName}`, where);
    return reg;
  }

  /**
   * Builds an implementation in `jobContainer`. The instance's own child container holds its
   * validated job section under `Tokens.PluginConfig`. An instance without a member its kind
   * requires is refused (`requireMembers`). Block filters, compressors and transports come back
   * guarded: what their hooks throw or return wrong names the plugin and hook (`guardPlugin`).
   */
  async create<K extends PluginKind>(
    kind: K,
    name: string,
    jobContainer: DependencyContainer,
    config: Record<string, unknown> = {},
    where: ErrorLocation = {},
  ): Promise<PluginKindMap[K]> {
    const reg = await this.lookup(kind, name, where);
    const scope = jobContainer.createChildContainer();
    scope.register(Tokens.PluginConfig, { useValue: config });
    let impl: PluginKindMap[K];
    try {
      impl = scope.resolve<PluginKindMap[K]>(implementationToken(kind, name));
    } catch (err) {
      throw pluginError(err, reg.plugin, `create ${kind} ${name}`, where);
    }
    requireMembers(kind, name, impl, reg.plugin, where);
    return guardPlugin(kind, impl, reg.plugin);
  }

  /** Imports every discovered package (for `ferry plugins --load` and conformance runs). */
  async loadAll(): Promise<void> {
    for (const p of this.discovery.plugins) await this.load(p);
  }

  private load(pkg: DiscoveredPlugin): Promise<void> {
    let p = this.loading.get(pkg.packageName);
    if (!p) {
      p = this.importAndRegister(pkg);
      this.loading.set(pkg.packageName, p);
    }
    return p;
  }

  private async importAndRegister(pkg: DiscoveredPlugin): Promise<void> {
    const entry = path.resolve(pkg.dir, pkg.manifest.entry);
    const where = { plugin: pkg.packageName, file: entry };
    let mod: Partial<PluginModule> & { default?: Partial<PluginModule> };
    try {
      mod = (await import(pathToFileURL(entry).href)) as typeof mod;
    } catch (err) {
      throw new FerryError('PLUGIN_LOAD_FAILED', `cannot import ${pkg.packageName}: ${(err as Error).message}`, where, {
        cause: err,
      });
    }
    const register = mod.register ?? mod.default?.register;
    if (typeof register !== 'function') {
      throw new FerryError('PLUGIN_LOAD_FAILED', `${pkg.packageName}'s entry module exports no register function`, where);
    }
    const before = new Set(this.registrations.keys());
    try {
      await register(this.registrar(pkg.packageName, new Set(implementations(pkg.manifest))));
    } catch (err) {
      // The registrar's own refusals keep their codes; anything else register throws is a load failure.
      if (err instanceof FerryError && (err.code === 'PLUGIN_CONTRACT' || err.code === 'PLUGIN_DUPLICATE')) throw err;
      const detail = err instanceof FerryError ? err.detail : err instanceof Error ? err.message : String(err);
      throw new FerryError('PLUGIN_LOAD_FAILED', `${pkg.packageName}'s register threw: ${detail}`, { ...where, hook: 'register' }, { cause: err });
    }
    const added = [...this.registrations.keys()].filter((k) => !before.has(k));
    const missing = implementations(pkg.manifest).filter((k) => !added.includes(k));
    if (missing.length) {
      throw new FerryError(
        'PLUGIN_CONTRACT',
        `${pkg.packageName} did not register ${missing.map(describeKey).join(', ')}: package.json "ferry.provides" declares ` +
          `${listKeys(implementations(pkg.manifest))}; register registered ${listKeys(added)}`,
        { ...where, hook: 'register' },
      );
    }
  }

  private registrar(pluginName: string, declared?: Set<string>): PluginRegistrar {
    return {
      pluginName,
      tokens: Tokens,
      register: <K extends PluginKind>(
        kind: K,
        name: string,
        provider: ImplementationProvider<PluginKindMap[K]>,
        options: RegistrationOptions = {},
      ): void => {
        const key = `${kind}:${name}`;
        if (!(PLUGIN_KINDS as readonly string[]).includes(kind)) {
          throw new FerryError('PLUGIN_CONTRACT', `${pluginName} registered unknown kind "${kind}"`, { plugin: pluginName });
        }
        if (declared && !declared.has(key)) {
          throw new FerryError(
            'PLUGIN_CONTRACT',
            `${pluginName} registered ${kind} "${name}" which its package.json "ferry.provides" does not declare ` +
              `(declared: ${listKeys([...declared])})`,
            { plugin: pluginName, hook: 'register' },
          );
        }
        const existing = this.registrations.get(key);
        if (existing) {
          throw new FerryError('PLUGIN_DUPLICATE', `${kind} "${name}" is registered by both ${existing.plugin} and ${pluginName}`, {
            plugin: pluginName,
          });
        }
        // tsyringe's provider union is wider than ours; the shapes are the same.
        this.container.register(implementationToken(kind, name), provider as never);
        this.registrations.set(key, { kind, name, plugin: pluginName, options });
      },
    };
  }

  private refusedFor(key: string, code?: string): RefusedPlugin | undefined {
    return this.discovery.refused.find((r) => r.manifest && implementations(r.manifest).includes(key) && (!code || r.error.code === code));
  }

  private notFound(kind: PluginKind, name: string, where: ErrorLocation): FerryError {
    const refused = this.refusedFor(`${kind}:${name}`);
    if (refused) {
      return new FerryError(refused.error.code, `${kind} "${name}" cannot be used: ${refused.error.detail}`, {
        ...where,
        plugin: refused.packageName,
      });
    }
    const names = this.available(kind).map((a) => a.name);
    const detail = `no plugin provides ${kind} "${name}"; available: ${names.length ? names.join(', ') : '(none)'}`;
    return new FerryError('PLUGIN_NOT_FOUND', detail, where);
  }
}

/** The `kind:name` keys `builtins` registers, found without building anything into a container. */
function builtinKeys(builtins: (r: PluginRegistrar) => void): string[] {
  const keys: string[] = [];
  builtins({ pluginName: BUILTIN_PACKAGE, tokens: Tokens, register: (kind, name) => void keys.push(`${kind}:${name}`) });
  return keys;
}

function listKeys(keys: string[]): string {
  return keys.length ? keys.map(describeKey).join(', ') : 'nothing';
}
