import { readFileSync } from 'node:fs';
import type { CommandModule } from 'yargs';
import { FerryError } from '@ferry/core/errors';
import { reportError } from './output.js';
import { VERBS, type Verb } from './commands/verbs.js';
import type { RestoreArgs } from './commands/restore.js';

type SetCode = (c: number) => void;
type CommandFactory = (setCode: SetCode) => CommandModule<object, never>;

/**
 * Each verb's module, imported only when that verb runs: `ferry --version`, `ferry --help` and one
 * verb do not pay for loading the others (nor @ferry/core's whole index).
 */
const LOADERS: Record<Verb, () => Promise<CommandFactory>> = {
  backup: async () => (await import('./commands/backup.js')).backupCommand as CommandFactory,
  list: async () => (await import('./commands/list.js')).listCommand as CommandFactory,
  restore: async () => (await import('./commands/restore.js')).restoreCommand as CommandFactory,
  files: async () => (await import('./commands/files.js')).filesCommand as CommandFactory,
  plugins: async () => (await import('./commands/plugins.js')).pluginsCommand as CommandFactory,
  validate: async () => (await import('./commands/validate.js')).validateCommand as CommandFactory,
  verify: async () => (await import('./commands/verify.js')).verifyCommand as CommandFactory,
  prune: async () => (await import('./commands/prune.js')).pruneCommand as CommandFactory,
  forget: async () => (await import('./commands/forget.js')).forgetCommand as CommandFactory,
  copy: async () => (await import('./commands/copy.js')).copyCommand as CommandFactory,
  gc: async () => (await import('./commands/gc.js')).gcCommand as CommandFactory,
  unlock: async () => (await import('./commands/unlock.js')).unlockCommand as CommandFactory,
  certs: async () => (await import('./commands/certs.js')).certsCommand as CommandFactory,
  proxy: async () => (await import('./commands/proxy.js')).proxyCommand as CommandFactory,
  repository: async () => (await import('./commands/repository-serve.js')).repositoryServeCommand as CommandFactory,
  'guest-proxy': async () => (await import('./commands/guest-proxy.js')).guestProxyCommand as CommandFactory,
  key: async () => (await import('./commands/key.js')).keyCommand as CommandFactory,
  serve: async () => (await import('./commands/serve.js')).serveCommand as CommandFactory,
  'instant-recover': async () => (await import('./commands/instant-recover.js')).instantRecoverCommand as CommandFactory,
  mount: async () => (await import('./commands/mount.js')).mountCommand as CommandFactory,
};

/** The CLI's version (the @ferry/cli package's). */
export function cliVersion(): string {
  return (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

/**
 * Which commands to register in full. The verb is the first word that is not an option (the CLI
 * has no global option that takes a value). No word: nothing can run, so every verb is listed from
 * its table entry alone (help, usage errors). A word that names no verb: every module, as before,
 * so that yargs reports exactly what it always did.
 */
async function commandsFor(argv: string[], setCode: SetCode): Promise<CommandModule<object, never>[]> {
  const word = argv.find((a) => !a.startsWith('-'));
  const verbs = Object.keys(VERBS) as Verb[];
  if (word !== undefined && !(word in VERBS)) return Promise.all(verbs.map(async (v) => (await LOADERS[v]())(setCode)));
  return Promise.all(
    verbs.map(async (v) => (v === word ? (await LOADERS[v]())(setCode) : { ...VERBS[v], handler: () => undefined })),
  );
}

/**
 * `ferry backup JOB` and `ferry backup JOB --json`, the forms a scheduler runs, need no command-line
 * library: the handler gets what yargs would give it, without the ~0.05 core-s of loading yargs and
 * building every verb's usage. Any other form (another option, a flag twice, a word that starts with
 * a dash or could be yargs' own) goes through yargs.
 */
function plainBackup(argv: string[]): { job: string; json: boolean } | undefined {
  if (argv[0] !== 'backup' || argv.length > 3) return undefined;
  const rest = argv.slice(1);
  const words = rest.filter((a) => a !== '--json');
  if (rest.length - words.length > 1 || words.length !== 1) return undefined;
  const job = words[0];
  if (job === '' || job.startsWith('-') || job === 'help' || job === 'completion') return undefined;
  return { job, json: rest.length === 2 };
}

/**
 * `ferry restore JOB --vm VM --disk DISK --to TARGET`, with `--point ID`, `--force` and `--json` in
 * any order, likewise without yargs: each option once, in the two-word form (`--vm VM`), values that
 * do not start with a dash. Anything else (`--define`, `--opt=value`, `-h`, a word too many) goes
 * through yargs, which reports usage errors as it always did.
 */
export function plainRestore(argv: string[]): RestoreArgs | undefined {
  if (argv[0] !== 'restore') return undefined;
  const values: Record<string, string> = {};
  const flags = new Set<string>();
  let job: string | undefined;
  for (let i = 1; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--force' || a === '--json') {
      if (flags.has(a)) return undefined;
      flags.add(a);
    } else if (a === '--vm' || a === '--disk' || a === '--to' || a === '--point') {
      const v = argv[++i];
      if (v === undefined || v === '' || v.startsWith('-') || a in values) return undefined;
      values[a] = v;
    } else if (job === undefined && a !== '' && !a.startsWith('-') && a !== 'help' && a !== 'completion') {
      job = a;
    } else {
      return undefined;
    }
  }
  const vm = values['--vm'];
  const disk = values['--disk'];
  const to = values['--to'];
  if (job === undefined || vm === undefined || disk === undefined || to === undefined) return undefined;
  return { job, vm, disk, to, point: values['--point'] ?? 'latest', force: flags.has('--force'), json: flags.has('--json') };
}

/** Runs the CLI and returns its exit code (tests call this in-process). */
export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const wantsJson = argv.includes('--json');
  try {
    const plain = plainBackup(argv);
    if (plain) {
      await (await LOADERS.backup())((c) => (code = c)).handler({ ...plain, _: ['backup'], $0: 'ferry' } as never);
      return code;
    }
    const restore = plainRestore(argv);
    if (restore) {
      await (await LOADERS.restore())((c) => (code = c)).handler({ ...restore, _: ['restore'], $0: 'ferry' } as never);
      return code;
    }
    const commands = await commandsFor(argv, (c) => (code = c));
    const { default: yargs } = await import('yargs');
    const cli = yargs(argv)
      .scriptName('ferry')
      .usage('$0 <command> [options]\n\nOpen, plugin-based block-level backup for virtual machines.');
    for (const c of commands) cli.command(c);
    cli
      .demandCommand(1, 'name a command: backup, list, restore, files, verify, prune, forget, copy, gc, unlock, key, plugins, validate, certs init, proxy serve, repository serve, guest-proxy serve, serve, instant-recover, mount')
      .strict()
      .help()
      .alias('h', 'help')
      .version(cliVersion())
      .wrap(Math.min(110, process.stdout.columns || 100))
      .fail((msg, err) => {
        throw err ?? new FerryError('CLI_USAGE', msg);
      });
    await cli.parseAsync();
  } catch (err) {
    code = reportError(err, wantsJson);
  }
  return code;
}
