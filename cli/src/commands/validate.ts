import type { CommandModule } from 'yargs';
import { JobRuntime } from '@ferry/core';
import { EXIT, printJson } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  json: boolean;
}

export function validateCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.validate,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the resolved job as JSON' }) as never,
    handler: async (args) => {
      const rt = await JobRuntime.open(args.job);
      await rt.close();
      if (args.json) printJson({ valid: true, job: rt.spec });
      else process.stdout.write(`${rt.spec.file}: valid job "${rt.spec.job}"\n`);
      setCode(EXIT.ok);
    },
  };
}
