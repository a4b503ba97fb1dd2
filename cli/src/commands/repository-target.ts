import { FerryError, JobRuntime, passphraseFile, RepositoryRuntime, type JobSpec, type Repository } from '@ferry/core';

export interface TargetArgs {
  job?: string;
  repository?: string;
  /** `--passphrase-file` for an encrypted bare repository (default: FERRY_PASSPHRASE). */
  passphraseFile?: string;
  /** Open an encrypted repository without its passphrase (lock objects only: `ferry unlock`). */
  keyless?: boolean;
}

/** The repository a maintenance command works on, from a job file or a bare folder. */
export interface RepositoryTarget {
  repo: Repository;
  /** The job, when one was given (its VMs, retention policy). */
  spec?: JobSpec;
  runtime: JobRuntime | RepositoryRuntime;
  close(): Promise<void>;
}

/** Opens the job's repository, a filesystem repository folder or a repository YAML file (`--repository`). */
export async function openTarget(args: TargetArgs): Promise<RepositoryTarget> {
  if (Boolean(args.job) === Boolean(args.repository)) {
    throw new FerryError('CLI_USAGE', 'name either a job file or --repository PATH|FILE.yaml (a filesystem repository folder, or a repository YAML file), not both or neither');
  }
  if (args.job && args.passphraseFile) {
    throw new FerryError('CLI_USAGE', "--passphrase-file is for --repository PATH; a job names its passphrase in repository.encryption");
  }
  const passphrase = args.passphraseFile ? passphraseFile(args.passphraseFile, `--passphrase-file ${args.passphraseFile}`) : undefined;
  const runtime = args.job
    ? await JobRuntime.open(args.job, { sourceMayBeGone: true })
    : await RepositoryRuntime.open(args.repository!, { passphrase, keyless: args.keyless });
  try {
    const repo = args.keyless && runtime instanceof JobRuntime ? await runtime.repository({ create: false, keyless: true }) : await runtime.repository({ create: false });
    return { repo, spec: runtime instanceof JobRuntime ? runtime.spec : undefined, runtime, close: () => runtime.close() };
  } catch (err) {
    await runtime.close();
    throw err;
  }
}

/** yargs positional + option for commands that take `JOB.yaml` or `--repository PATH|FILE.yaml`. */
export const TARGET_OPTIONS = {
  repository: { type: 'string', describe: 'a filesystem repository folder, or a repository YAML file (a repository: mapping, e.g. type: s3), instead of a job file' },
  'passphrase-file': { type: 'string', describe: 'with --repository: file holding the passphrase of an encrypted repository (default: env FERRY_PASSPHRASE)' },
} as const;
