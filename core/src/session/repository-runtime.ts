import path from 'node:path';
import { existsSync } from 'node:fs';
import { FerryError } from '../errors.js';
import type { BlockCodec } from '../pipe/block-codec.js';
import { WorkerBlockCodec } from '../pipe/worker-block-codec.js';
import type { PluginHost } from '../plugins/plugin-host.js';
import { Repository } from '../repository/repository.js';
import { createPluginHost, type RuntimeOptions } from './job-runtime.js';

/**
 * What maintenance commands need when they are pointed at a repository folder instead of a job file
 * (`ferry verify --repository PATH`): the filesystem backend, the repository on it, and the block
 * codec on worker threads. Same `repository`/`codec`/`close` shape as `JobRuntime`.
 */
export class RepositoryRuntime {
  private codecPromise?: Promise<BlockCodec>;

  private constructor(
    private readonly host: PluginHost,
    readonly dir: string,
  ) {}

  static async openFilesystem(dir: string, opts: RuntimeOptions = {}): Promise<RepositoryRuntime> {
    const abs = path.resolve(dir);
    if (!existsSync(abs)) throw new FerryError('CLI_USAGE', `repository folder ${abs} does not exist`, { object: abs });
    return new RepositoryRuntime(await createPluginHost(opts), abs);
  }

  async repository(_opts: { create: false } = { create: false }): Promise<Repository> {
    const backend = await this.host.create('repository-backend', 'filesystem', this.host.container, { path: this.dir });
    return Repository.open(backend, { create: false });
  }

  codec(): Promise<BlockCodec> {
    this.codecPromise ??= Promise.resolve(new WorkerBlockCodec(this.host.options));
    return this.codecPromise;
  }

  async close(): Promise<void> {
    await (await this.codecPromise)?.close();
  }
}
