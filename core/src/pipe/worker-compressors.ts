import type { Compressor } from '../contracts/compressor.js';
import type { ImplementationProvider, PluginModule, PluginRegistrar } from '../contracts/plugin.js';
import { registerBuiltinCompressors } from '../compression/builtin-compressors.js';
import { guardPlugin, requireMembers } from '../plugins/plugin-guard.js';
import { Tokens } from '../tokens.js';

/** The core's package name as the plugin host records it (`BUILTIN_PACKAGE` in plugin-host.ts). */
const BUILTIN_PACKAGE = '@ferry/core';

/**
 * A discovered plugin package that provides compressors, as the main thread's plugin host found it:
 * what a block worker needs to build those compressors without repeating the discovery.
 */
export interface CompressorPlugin {
  /** Package name (stamped on what its compressors throw). */
  plugin: string;
  /** Its entry module, a file URL. */
  entry: string;
  /** Every `kind:name` its package.json declares (a registration outside them is the host's to refuse). */
  declares: string[];
}

type Provider = ImplementationProvider<Compressor>;

/**
 * Compressors for a block worker, built without the plugin host where that gives the same
 * instance: a worker thread then loads the block codec, the compressor's own package and nothing
 * else (the host, its dependency container and the package discovery cost ~0.1 core-s per
 * thread). The lean path takes the built-in compressors and those a listed package registers as a
 * value (`{ useValue }`), checked and guarded as the host would (`requireMembers`, `guardPlugin`).
 * Anything else — a name no listed package provides, a class or factory provider, a package whose
 * import or `register` fails or registers what it did not declare — goes to `full`, the plugin
 * host, which builds it or fails with the host's own error.
 */
export function leanCompressors(plugins: CompressorPlugin[], full: (name: string) => Promise<Compressor>): (name: string) => Promise<Compressor> {
  const builtins = new Map<string, Provider>();
  registerBuiltinCompressors(registrar(BUILTIN_PACKAGE, (kind, name, provider) => void (kind === 'compressor' && builtins.set(name, provider as Provider))));
  const loaded = new Map<string, Promise<Map<string, Provider> | undefined>>();

  const load = (p: CompressorPlugin): Promise<Map<string, Provider> | undefined> => {
    let got = loaded.get(p.entry);
    if (!got) {
      got = (async () => {
        const declared = new Set(p.declares);
        const found = new Map<string, Provider>();
        let odd = false;
        const mod = (await import(p.entry)) as Partial<PluginModule> & { default?: Partial<PluginModule> };
        const register = mod.register ?? mod.default?.register;
        if (typeof register !== 'function') return undefined;
        await register(
          registrar(p.plugin, (kind, name, provider) => {
            const key = `${kind}:${name}`;
            if (!declared.has(key) || (kind === 'compressor' && builtins.has(name))) odd = true;
            else if (kind === 'compressor') found.set(name, provider as Provider);
          }),
        );
        return odd ? undefined : found;
      })().catch(() => undefined);
      loaded.set(p.entry, got);
    }
    return got;
  };

  const lean = async (name: string): Promise<Compressor | undefined> => {
    let plugin = BUILTIN_PACKAGE;
    let provider = builtins.get(name);
    if (!provider) {
      const p = plugins.find((c) => c.declares.includes(`compressor:${name}`));
      if (!p) return undefined;
      provider = (await load(p))?.get(name);
      plugin = p.plugin;
    }
    if (!provider || !('useValue' in provider)) return undefined;
    const impl = provider.useValue;
    try {
      requireMembers('compressor', name, impl, plugin);
    } catch {
      return undefined; // the host refuses it with its own words
    }
    return guardPlugin('compressor', impl, plugin);
  };

  return async (name) => (await lean(name)) ?? full(name);
}

function registrar(pluginName: string, add: (kind: string, name: string, provider: unknown) => void): PluginRegistrar {
  return { pluginName, tokens: Tokens, register: (kind, name, provider) => add(kind, name, provider) };
}
