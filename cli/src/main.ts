import yargs from 'yargs';
import { FerryError } from '@ferry/core';
import { backupCommand } from './commands/backup.js';
import { listCommand } from './commands/list.js';
import { pluginsCommand } from './commands/plugins.js';
import { restoreCommand } from './commands/restore.js';
import { validateCommand } from './commands/validate.js';
import { verifyCommand } from './commands/verify.js';
import { pruneCommand } from './commands/prune.js';
import { forgetCommand } from './commands/forget.js';
import { copyCommand } from './commands/copy.js';
import { gcCommand } from './commands/gc.js';
import { unlockCommand } from './commands/unlock.js';
import { certsCommand } from './commands/certs.js';
import { keyCommand } from './commands/key.js';
import { proxyCommand } from './commands/proxy.js';
import { repositoryServeCommand } from './commands/repository-serve.js';
import { reportError } from './output.js';

/** Runs the CLI and returns its exit code (tests call this in-process). */
export async function main(argv: string[]): Promise<number> {
  let code = 0;
  const wantsJson = argv.includes('--json');
  const cli = yargs(argv)
    .scriptName('ferry')
    .usage('$0 <command> [options]\n\nOpen, plugin-based block-level backup for virtual machines.')
    .command(backupCommand((c) => (code = c)))
    .command(listCommand((c) => (code = c)))
    .command(restoreCommand((c) => (code = c)))
    .command(pluginsCommand((c) => (code = c)))
    .command(validateCommand((c) => (code = c)))
    .command(verifyCommand((c) => (code = c)))
    .command(pruneCommand((c) => (code = c)))
    .command(forgetCommand((c) => (code = c)))
    .command(copyCommand((c) => (code = c)))
    .command(gcCommand((c) => (code = c)))
    .command(unlockCommand((c) => (code = c)))
    .command(certsCommand((c) => (code = c)))
    .command(proxyCommand((c) => (code = c)))
    .command(repositoryServeCommand((c) => (code = c)))
    .command(keyCommand((c) => (code = c)))
    .demandCommand(1, 'name a command: backup, list, restore, verify, prune, forget, gc, unlock, key, plugins, validate, certs init, proxy serve, repository serve')
    .strict()
    .help()
    .alias('h', 'help')
    .version()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((msg, err) => {
      throw err ?? new FerryError('CLI_USAGE', msg);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    code = reportError(err, wantsJson);
  }
  return code;
}
