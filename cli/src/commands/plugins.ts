import type { CommandModule } from 'yargs';
import { BUILTIN_PACKAGE, PLUGIN_KINDS, createPluginHost, JobFile, type FerryError, type PluginHost } from '@ferry/core';
import { EXIT, printJson, table } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job?: string;
  json: boolean;
}

export function pluginsCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.plugins,
    builder: (y) =>
      y
        .option('job', { type: 'string', describe: "also search the folders in this job file's plugins: key" })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON on stdout' }) as never,
    handler: async (args) => {
      const jobDirs = args.job ? ((JobFile.load(args.job).raw.plugins as string[] | undefined) ?? []) : [];
      const host = await createPluginHost({ jobDirs });
      const view = describe(host);
      if (args.json) printJson(view);
      else {
        process.stdout.write(
          table(
            ['PLUGIN', 'VERSION', 'API', 'FOUND IN', 'PROVIDES'],
            view.plugins.map((p) => [p.name, p.version, p.apiVersion, p.source, p.provides.map((x) => `${x.kind} ${x.name}`).join(', ')]),
          ),
        );
        for (const r of view.refused) process.stdout.write(`refused ${r.name}@${r.version ?? '?'} (${r.dir}): ${r.error.message}\n`);
      }
      setCode(EXIT.ok);
    },
  };
}

function describe(host: PluginHost): {
  plugins: { name: string; version: string; apiVersion: string; source: string; dir: string; provides: { kind: string; name: string }[] }[];
  refused: { name: string; version?: string; dir: string; source: string; error: ReturnType<FerryError['toJSON']> }[];
} {
  const builtins = PLUGIN_KINDS.flatMap((kind) =>
    host.available(kind).filter((a) => a.plugin === BUILTIN_PACKAGE).map((a) => ({ kind, name: a.name })),
  );
  return {
    plugins: [
      { name: BUILTIN_PACKAGE, version: '', apiVersion: '', source: 'built-in', dir: '', provides: builtins },
      ...host.discovery.plugins.map((p) => ({
        name: p.packageName,
        version: p.version,
        apiVersion: p.manifest.apiVersion,
        source: p.source,
        dir: p.dir,
        provides: Object.entries(p.manifest.provides).flatMap(([kind, names]) => (names ?? []).map((name) => ({ kind, name }))),
      })),
    ],
    refused: host.discovery.refused.map((r) => ({
      name: r.packageName,
      version: r.version,
      dir: r.dir,
      source: r.source,
      error: r.error.toJSON(),
    })),
  };
}
