import type { CommandModule } from 'yargs';
import { startRepositoryService } from '@ferry/core/remote/services';
import { EXIT } from '../output.js';
import { log, serveUntilSignal, serviceConfig, type ServeArgs } from './serve-support.js';
import { VERBS } from './verbs.js';

interface Args extends ServeArgs {
  action: string;
  repository?: string;
}

/** `ferry repository serve`: the target-side data mover as a service, in front of one repository. */
export function repositoryServeCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.repository,
    builder: (y) =>
      y
        .positional('action', { type: 'string', choices: ['serve'], demandOption: true })
        .option('listen', { type: 'string', describe: 'HOST:PORT to listen on (port 0: any free port)' })
        .option('certs', { type: 'string', describe: 'certificate folder made by `ferry certs init` (uses repository.crt/.key)' })
        .option('repository', { type: 'string', describe: 'a filesystem repository folder, or a YAML file { type, ...backend config }' })
        .option('config', { type: 'string', describe: 'YAML file: listen, certs, psk, allow, repository, resumeWindowSeconds, window' }) as never,
    handler: async (args) => {
      const c = serviceConfig(args, { repository: args.repository });
      await serveUntilSignal('repository', () => startRepositoryService(c, log('repository')));
      setCode(EXIT.ok);
    },
  };
}
