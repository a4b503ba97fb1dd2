import path from 'node:path';
import { existsSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import { WorkerBlockCodec } from '../pipe/worker-block-codec.js';
import type { PluginHost } from '../plugins/plugin-host.js';
import { Repository, type PassphraseSource } from '../repository/repository.js';
import { passphraseEnv } from '../repository/passphrase.js';
import { createPluginHost, type RuntimeOptions } from './job-runtime.js';

/**
 * What maintenance commands need when they are pointed at a repository folder instead of a job file
 * (`ferry verify --repository PATH`): the filesystem backend, the repository on it, and the block
 * codec on worker threads. Same `repository`/`codec`/`close` shape as `JobRuntime`.
 */
export class RepositoryRuntime {
  private codecPromise?: Promise<BlockCodec>;
  private idKey?: Buffer;

  private constructor(
    private readonly host: PluginHost,
    readonly dir: string,
    private readonly passphrase: PassphraseSource,
    private readonly keyless = false,
  ) {}

  /** `passphrase`: for an encrypted repository (`--passphrase-file`); default FERRY_PASSPHRASE. */
  static async openFilesystem(dir: string, opts: RuntimeOptions & { passphrase?: PassphraseSource; keyless?: boolean } = {}): Promise<RepositoryRuntime> {
    const abs = path.resolve(dir);
    if (!existsSync(abs)) throw new FerryError('CLI_USAGE', `repository folder ${abs} does not exist`, { object: abs });
    return new RepositoryRuntime(await createPluginHost(opts), abs, opts.passphrase ?? passphraseEnv('FERRY_PASSPHRASE'), opts.keyless);
  }

  async repository(_opts: { create: false } = { create: false }): Promise<Repository> {
    const backend = await this.host.create('repository-backend', 'filesystem', this.host.container, { path: this.dir });
    const repo = await Repository.open(backend, { create: false, passphrase: this.passphrase, keyless: this.keyless });
    if (this.codecPromise && repo.idKey && !this.idKey) throw new FerryError('INTERNAL', 'the block codec was created before the encrypted repository was opened');
    this.idKey = repo.idKey;
    return repo;
  }

  codec(): Promise<BlockCodec> {
    this.codecPromise ??= Promise.resolve(new WorkerBlockCodec(this.host.options, undefined, this.idKey));
    return this.codecPromise;
  }

  async close(): Promise<void> {
    await (await this.codecPromise)?.close();
  }
}
