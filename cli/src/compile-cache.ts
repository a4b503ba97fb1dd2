import module from 'node:module';
import os from 'node:os';
import path from 'node:path';

/**
 * Turns on V8's on-disk compile cache for the modules loaded after this call, where Node has it
 * (`module.enableCompileCache`, Node >= 22.1): later runs skip parsing and compiling Ferry and its
 * dependencies. The cache lives under the user's cache folder (`$XDG_CACHE_HOME/ferry/v8` or
 * `~/.cache/ferry/v8`); `NODE_COMPILE_CACHE` picks another folder and `NODE_DISABLE_COMPILE_CACHE=1`
 * turns it off (Node's own variables). A folder that cannot be written only costs the cache:
 * Node then runs without it, and nothing here throws.
 */
export function enableCompileCache(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const enable = (module as { enableCompileCache?: (dir?: string) => { status: number; directory?: string } }).enableCompileCache;
  if (typeof enable !== 'function' || env.NODE_DISABLE_COMPILE_CACHE) return undefined;
  try {
    const r = enable(env.NODE_COMPILE_CACHE || compileCacheDir(env));
    return r.directory;
  } catch {
    return undefined;
  }
}

/** `$XDG_CACHE_HOME/ferry/v8`, else `~/.cache/ferry/v8` (a relative XDG_CACHE_HOME is ignored, as the spec says). */
export function compileCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME;
  const base = xdg && path.isAbsolute(xdg) ? xdg : path.join(os.homedir(), '.cache');
  return path.join(base, 'ferry', 'v8');
}
