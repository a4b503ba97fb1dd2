import type { CommandModule } from 'yargs';
import { FerryError, wire } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { VERBS } from './verbs.js';

interface InitArgs {
  dir: string;
  force: boolean;
  days: number;
  json: boolean;
}

/**
 * `ferry certs init DIR`: a private CA and a key + certificate for each role (server, proxy,
 * repository), so that services and the backup server can authenticate each other with mutual TLS.
 */
export function certsCommand(setCode: (c: number) => void): CommandModule<object, object> {
  const init: CommandModule<object, InitArgs> = {
    command: 'init <dir>',
    describe: 'write ca.crt/ca.key and server, proxy and repository .crt/.key (keys mode 0600)',
    builder: (y) =>
      y
        .positional('dir', { type: 'string', demandOption: true, describe: 'folder for the files (created if missing)' })
        .option('force', { type: 'boolean', default: false, describe: 'replace files already there (peers with the old ones are then refused)' })
        .option('days', { type: 'number', default: wire.DEFAULT_CERT_DAYS, describe: 'validity of the certificates in days' })
        .option('json', { type: 'boolean', default: false, describe: 'print JSON on stdout' }) as never,
    handler: async (args) => {
      if (!Number.isInteger(args.days) || args.days < 1) throw new FerryError('CLI_USAGE', `--days must be a whole number of days >= 1, not ${args.days}`);
      const { files } = await wire.initCerts(args.dir, { force: args.force, days: args.days });
      if (args.json) printJson({ dir: args.dir, files });
      else process.stdout.write(render(args.dir, files));
      setCode(EXIT.ok);
    },
  };
  return {
    ...VERBS.certs,
    builder: (y) => y.command(init).demandCommand(1, 'name a certs command: init'),
    handler: () => undefined,
  };
}

function render(dir: string, files: string[]): string {
  return [
    `Wrote a CA and one certificate per role into ${dir}:`,
    ...files.map((f) => `  ${f}${f.endsWith('.key') ? '  (private key, mode 0600)' : ''}`),
    '',
    'Give each machine ca.crt and the .crt/.key of its role only: the backup server gets server.*,',
    'a proxy proxy.*, a repository service repository.*. No service needs ca.key: keep it elsewhere.',
    '',
  ].join('\n');
}
