import path from 'node:path';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { Ajv } from 'ajv';
import { parse as parseYaml } from 'yaml';
import { FerryError } from '../errors.js';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import type { BlockCodec } from '../repository/block-codec.js';
import { WorkerBlockCodec, workerPlugins } from '../pipe/worker-block-codec.js';
import type { PluginHost } from '../plugins/plugin-host.js';
import { Repository, type PassphraseSource } from '../repository/repository.js';
import { jobPassphrase, passphraseEnv } from '../repository/passphrase.js';
import { createPluginHost, type RuntimeOptions } from './job-runtime.js';

/** A repository named by a YAML file (`--repository FILE.yaml`): backend type and its config. */
export interface RepositoryFile {
  file: string;
  type: string;
  config: Record<string, unknown>;
  encryption?: { passphraseFile?: string; passphraseEnv?: string };
  immutability?: { days: number };
}

/**
 * Reads a repository YAML file: a mapping under `repository:` (a job file's section, or a file that
 * holds only that key) or the bare mapping (`type: s3`, `bucket: ...`). `encryption` and
 * `immutability` are the job's core keys; the rest is the backend's config, checked against the
 * plugin's schema by `RepositoryRuntime.openFile`. Relative `path` and `passphraseFile` values are
 * relative to the file.
 */
export function readRepositoryFile(file: string): RepositoryFile {
  const abs = path.resolve(file);
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(abs, 'utf8'));
  } catch (err) {
    throw new FerryError('CLI_USAGE', `cannot read the repository file: ${(err as Error).message}`, { file: abs });
  }
  const isMap = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
  const raw = isMap(doc) && isMap(doc.repository) ? doc.repository : doc;
  if (!isMap(raw)) throw new FerryError('CLI_USAGE', 'a repository file holds a mapping (type: ..., or repository: { type: ... })', { file: abs });
  if (typeof raw.type !== 'string') throw new FerryError('CLI_USAGE', 'missing key "type" (the repository backend: filesystem, s3)', { file: abs, path: 'type' });
  const { type, encryption, immutability, ...config } = raw as { type: string; encryption?: RepositoryFile['encryption']; immutability?: RepositoryFile['immutability'] } & Record<string, unknown>;
  if (typeof config.path === 'string') config.path = path.resolve(path.dirname(abs), config.path);
  const enc = encryption?.passphraseFile ? { passphraseFile: path.resolve(path.dirname(abs), encryption.passphraseFile) } : encryption;
  return { file: abs, type, config, ...(enc && { encryption: enc }), ...(immutability && { immutability }) };
}

/**
 * Whether a `--repository` YAML file is a job file (it has a top-level `job:` key) rather than a
 * repository file (a `repository:` mapping alone, or the bare backend mapping).
 */
export function isJobFile(file: string): boolean {
  if (!/\.ya?ml$/i.test(file) || !existsSync(file) || !statSync(file).isFile()) return false;
  try {
    const doc = parseYaml(readFileSync(file, 'utf8')) as unknown;
    return typeof doc === 'object' && doc !== null && 'job' in doc;
  } catch {
    return true; // the job loader reports the syntax error with its position
  }
}

/**
 * What maintenance commands need when they are pointed at a repository instead of a job file
 * (`ferry verify --repository PATH|FILE.yaml`): the backend (a filesystem folder, or the one a
 * repository YAML file names), the repository on it, and the block codec on worker threads. Same
 * `repository`/`codec`/`close` shape as `JobRuntime`.
 */
export class RepositoryRuntime {
  private codecPromise?: Promise<BlockCodec>;
  private readonly backends: RepositoryBackend[] = [];
  private idKey?: Buffer;

  private constructor(
    private readonly host: PluginHost,
    /** The backend: `filesystem` with `{ path }` for a folder. */
    readonly backendType: string,
    readonly backendConfig: Record<string, unknown>,
    private readonly passphrase: PassphraseSource,
    private readonly keyless = false,
    private readonly file?: string,
    private readonly settings?: { encrypted?: boolean; immutabilityDays?: number },
  ) {}

  /** The repository folder (filesystem) or the repository file. */
  get dir(): string {
    return this.file ?? String(this.backendConfig.path);
  }

  /**
   * `--repository PATH`: a folder is a filesystem repository; a file is a repository YAML file
   * (`readRepositoryFile`).
   */
  static async open(spec: string, opts: RuntimeOptions & { passphrase?: PassphraseSource; keyless?: boolean } = {}): Promise<RepositoryRuntime> {
    const abs = path.resolve(spec);
    if (existsSync(abs) && statSync(abs).isFile()) return RepositoryRuntime.openFile(abs, opts);
    return RepositoryRuntime.openFilesystem(abs, opts);
  }

  /** A repository YAML file: its backend config is checked against the plugin's schema here. */
  static async openFile(file: string, opts: RuntimeOptions & { passphrase?: PassphraseSource; keyless?: boolean } = {}): Promise<RepositoryRuntime> {
    const r = readRepositoryFile(file);
    const host = await createPluginHost(opts);
    const reg = await host.registration('repository-backend', r.type, { file: r.file, path: 'type' });
    const schema = reg.options.configSchema;
    if (schema) {
      const validate = new Ajv({ strict: false, useDefaults: false }).compile({ type: 'object', ...schema, additionalProperties: false });
      if (!validate(r.config)) {
        const e = validate.errors![0];
        const extra = e.keyword === 'additionalProperties' ? `.${String((e.params as { additionalProperty: string }).additionalProperty)}: unknown key` : `: ${e.message ?? 'is invalid'}`;
        throw new FerryError('CLI_USAGE', `repository${e.instancePath.replace(/\//g, '.')}${extra}`, { file: r.file });
      }
    }
    return new RepositoryRuntime(host, r.type, r.config, opts.passphrase ?? jobPassphrase(r.encryption, r.file), opts.keyless, r.file, {
      ...(r.encryption && { encrypted: true }),
      ...(r.immutability && { immutabilityDays: r.immutability.days }),
    });
  }

  /** `passphrase`: for an encrypted repository (`--passphrase-file`); default FERRY_PASSPHRASE. */
  static async openFilesystem(dir: string, opts: RuntimeOptions & { passphrase?: PassphraseSource; keyless?: boolean } = {}): Promise<RepositoryRuntime> {
    const abs = path.resolve(dir);
    if (!existsSync(abs)) throw new FerryError('CLI_USAGE', `repository folder ${abs} does not exist`, { object: abs });
    return new RepositoryRuntime(await createPluginHost(opts), 'filesystem', { path: abs }, opts.passphrase ?? passphraseEnv('FERRY_PASSPHRASE'), opts.keyless);
  }

  /**
   * `create` (a repository file only, for `ferry copy --to`): creates the repository when its
   * location holds none, with the file's `encryption` and `immutability`.
   */
  async repository(opts: { create: boolean } = { create: false }): Promise<Repository> {
    if (opts.create && !this.file) throw new FerryError('INTERNAL', 'a repository folder given by path is never created by a maintenance command');
    const backend = await this.host.create('repository-backend', this.backendType, this.host.container, this.backendConfig, this.file ? { file: this.file } : {});
    this.backends.push(backend);
    const repo = await Repository.open(backend, {
      create: opts.create,
      passphrase: this.passphrase,
      keyless: this.keyless,
      ...(opts.create && { settings: this.settings }),
    });
    if (this.codecPromise && repo.idKey && !this.idKey) throw new FerryError('INTERNAL', 'the block codec was created before the encrypted repository was opened');
    this.idKey = repo.idKey;
    return repo;
  }

  codec(): Promise<BlockCodec> {
    this.codecPromise ??= Promise.resolve(new WorkerBlockCodec(workerPlugins(this.host), undefined, this.idKey));
    return this.codecPromise;
  }

  async close(): Promise<void> {
    await (await this.codecPromise)?.close();
    for (const b of this.backends.splice(0)) await b.close?.();
  }
}
