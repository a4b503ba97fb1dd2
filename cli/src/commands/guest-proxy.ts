import type { CommandModule } from 'yargs';
import { startGuestProxyService } from '@ferry/core/remote/guest';
import { EXIT } from '../output.js';
import { log, serveUntilSignal } from './serve-support.js';
import { VERBS } from './verbs.js';

interface Args {
  action: string;
  listen?: string;
  certs?: string;
}

/** `ferry guest-proxy serve`: the guest interaction proxy, for sites where only this host reaches the guests. */
export function guestProxyCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS['guest-proxy'],
    builder: (y) =>
      y
        .positional('action', { type: 'string', choices: ['serve'], demandOption: true })
        .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (port 0: any free port)' })
        .option('certs', { type: 'string', describe: 'certificate folder made by `ferry certs init` (uses proxy.crt/.key; accepts backup servers)' }) as never,
    handler: async (args) => {
      await serveUntilSignal('guest-proxy', () => startGuestProxyService({ listen: args.listen, certs: args.certs }, log('guest-proxy')));
      setCode(EXIT.ok);
    },
  };
}
