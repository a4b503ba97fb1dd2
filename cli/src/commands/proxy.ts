import type { CommandModule } from 'yargs';
import { startProxyService } from '@ferry/core/remote/services';
import { EXIT } from '../output.js';
import { log, serveUntilSignal, serviceConfig, type ServeArgs } from './serve-support.js';
import { VERBS } from './verbs.js';

interface Args extends ServeArgs {
  action: string;
  taskSlots?: number;
}

/** `ferry proxy serve`: the source-side data mover as a service. */
export function proxyCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.proxy,
    builder: (y) =>
      y
        .positional('action', { type: 'string', choices: ['serve'], demandOption: true })
        .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (port 0: any free port)' })
        .option('certs', { type: 'string', describe: 'certificate folder made by `ferry certs init` (uses proxy.crt/.key)' })
        .option('config', { type: 'string', describe: 'YAML file: listen, certs, psk, allow, taskSlots' })
        .option('task-slots', { type: 'number', describe: 'disks read at the same time (default 4)' }) as never,
    handler: async (args) => {
      const c = serviceConfig(args, { taskSlots: args.taskSlots });
      await serveUntilSignal('proxy', () => startProxyService(c, log('proxy')));
      setCode(EXIT.ok);
    },
  };
}
