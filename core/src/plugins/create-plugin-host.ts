import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { registerBuiltins } from '../builtin.js';
import { PluginHost } from './plugin-host.js';

export interface PluginHostOptions {
  /** Defaults to `process.env.FERRY_PLUGIN_PATH`. */
  pluginPath?: string;
  /** Ferry's installation root (its `plugins/` and `node_modules/`); found from the core's location. */
  installRoot?: string;
  /** A job's `plugins:` folders. */
  jobDirs?: string[];
}

/** Builds the plugin host for a Ferry installation (also used by `ferry plugins`). */
export async function createPluginHost(opts: PluginHostOptions = {}): Promise<PluginHost> {
  return PluginHost.create(
    {
      installRoot: opts.installRoot ?? findInstallRoot(),
      envPath: opts.pluginPath ?? process.env.FERRY_PLUGIN_PATH,
      jobDirs: opts.jobDirs,
      nodeModules: [path.join(process.cwd(), 'node_modules')],
    },
    registerBuiltins,
  );
}

export function findInstallRoot(): string {
  const coreDir = realpathSync(path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..'));
  for (let d = path.dirname(coreDir); ; d = path.dirname(d)) {
    if (existsSync(path.join(d, 'node_modules'))) return d;
    if (path.dirname(d) === d) return path.dirname(coreDir);
  }
}
