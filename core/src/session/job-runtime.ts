import type { DependencyContainer } from 'tsyringe';
import { LEVEL_CODECS } from '../compression/levels.js';
import type { BlockFilter } from '../contracts/block-filter.js';
import type { JsonSchema, PluginKind, PluginKindMap } from '../contracts/plugin.js';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import type { SourceHost } from '../contracts/source-host.js';
import type { GuestRuntime } from '../contracts/guest-runtime.js';
import type { Transport } from '../contracts/transport.js';
import type { JobContext } from '../job/job-context.js';
import { choiceName, DEFAULT_FILTERS, JobFile, type CompressionChoice, type PluginChoice, type JobSpec } from '../job/job-loader.js';
import type { PluginSchemas } from '../job/job-schema.js';
import { FerryError } from '../errors.js';
import type { PluginHost } from '../plugins/plugin-host.js';
import { Repository } from '../repository/repository.js';
import { jobPassphrase } from '../repository/passphrase.js';
import type { WriteMeter } from '../repository/block-store.js';
import { Tokens } from '../tokens.js';
import type { BlockCodec } from '../repository/block-codec.js';
import { INLINE_CODEC_BYTES, WorkerBlockCodec, workerPlugins } from '../pipe/worker-block-codec.js';
import { createPluginHost } from '../plugins/create-plugin-host.js';
import { notHere } from './session-common.js';
import { autoTransportOrder } from '../plan/disk-plan.js';

export { createPluginHost, findInstallRoot } from '../plugins/create-plugin-host.js';

export interface RuntimeOptions {
  /** Defaults to `process.env.FERRY_PLUGIN_PATH`. */
  pluginPath?: string;
  /** Ferry's installation root (its `plugins/` and `node_modules/`); found from the core's location. */
  installRoot?: string;
  /** For commands that only read the repository: see `JobLoadOptions.sourceMayBeGone`. */
  sourceMayBeGone?: boolean;
}


/**
 * One job's world: its validated job file, the plugins it uses, and its own child DI container
 * (disposed by `close`). Implementations are built on first use and shared within the job.
 */
export class JobRuntime {
  private readonly cache = new Map<string, Promise<unknown>>();
  private codecPromise?: Promise<BlockCodec>;
  /** The opened repository's block-id key (encrypted repositories): the codec hashes with it. */
  private idKey?: Buffer;

  private constructor(
    readonly spec: JobSpec,
    readonly jobFile: JobFile,
    readonly plugins: PluginHost,
    readonly container: DependencyContainer,
  ) {}

  static async open(file: string, opts: RuntimeOptions = {}): Promise<JobRuntime> {
    const jobFile = JobFile.load(file, { sourceMayBeGone: opts.sourceMayBeGone });
    const raw = jobFile.raw as { plugins?: string[] };
    const plugins = await createPluginHost({ ...opts, jobDirs: raw.plugins });
    const spec = jobFile.complete(await pluginSchemas(plugins, jobFile));
    const container = plugins.container.createChildContainer();
    const ctx: JobContext = { name: spec.job, file: spec.file, dir: spec.dir, where: (p) => jobFile.where(p) };
    container.register(Tokens.JobContext, { useValue: ctx });
    return new JobRuntime(spec, jobFile, plugins, container);
  }

  /**
   * `vms: all` / `vms: { match }`: the source host's VMs that the pattern takes, in the host's
   * order, become the job's VMs (each with every disk). Done once, before the session locks them.
   */
  async resolveVms(host: SourceHost): Promise<void> {
    const select = this.spec.source.select;
    if (select === undefined || this.spec.source.vms.length) return;
    const at = this.jobFile.where(['source', 'vms']);
    if (!host.listVms) {
      throw new FerryError('JOB_INVALID', `source host ${this.spec.source.host} cannot list its VMs: name them under vms: (- name: ...)`, at);
    }
    const names = await host.listVms();
    const picked = select === 'all' ? names : names.filter(globMatcher(select.match));
    if (!picked.length) {
      const what = select === 'all' ? 'has no VMs' : `has no VM whose name matches ${JSON.stringify(select.match)} (it has: ${names.join(', ') || 'none'})`;
      throw new FerryError('SOURCE_VM_NOT_FOUND', `source host ${host.label} ${what}`, { ...at, host: host.label });
    }
    this.spec.source.vms = picked.map((name) => ({ name, options: {} }));
  }

  sourceHost(): Promise<SourceHost> {
    return this.instance('source-host', this.spec.source.host, this.spec.source.config, ['source', 'host']);
  }

  backend(): Promise<RepositoryBackend> {
    if (this.spec.remote) return Promise.reject(notHere(this.spec.remote.server, this.jobFile.where(['repository', 'server'])));
    return this.instance('repository-backend', this.spec.repository.type, this.spec.repository.config, ['repository', 'type']);
  }

  /** Opens (or creates) the job's repository with the job's encryption and immutability settings. */
  async repository(opts: { create: boolean; writeMeter?: WriteMeter; keyless?: boolean }): Promise<Repository> {
    const r = this.spec.repository;
    const repo = await Repository.open(await this.backend(), {
      ...opts,
      passphrase: jobPassphrase(r.encryption, this.spec.file),
      settings: { encrypted: r.encryption ? true : undefined, immutabilityDays: r.immutability?.days },
    });
    if (this.codecPromise && repo.idKey && !this.idKey) throw new FerryError('INTERNAL', 'the block codec was created before the encrypted repository was opened');
    this.idKey = repo.idKey;
    return repo;
  }

  /** The job's options reach only the transport the job names; `auto` tries others without options. */
  transport(name: string): Promise<Transport> {
    return this.instance('transport', name, name === this.spec.transport ? this.spec.transportOptions : {}, ['transport']);
  }

  /** Transport names to try for `transport: auto`, in order. */
  autoTransports(): string[] {
    return autoTransportOrder(this.plugins.available('transport').map((t) => t.name));
  }

  async filters(): Promise<{ name: string; impl: BlockFilter }[]> {
    return Promise.all(
      this.spec.filters.map(async (name, i) => ({
        name,
        // per item: one filter listed twice with different options is two instances
        impl: await this.instance('block-filter', name, this.spec.filterOptions[i] ?? {}, ['filters', i], `${i}`),
      })),
    );
  }

  /** The guest runtime a VM's `guest.os` names (`at`: where the key is). */
  guestRuntime(os: string, at: (string | number)[]): Promise<GuestRuntime> {
    // `guestProxies:`: the steps run there, with that host's guest plugins
    const { guestProxies, certs } = this.spec;
    if (guestProxies && certs) return import('../remote/guest/remote-guest-runtime.js').then((m) => new m.RemoteGuestRuntime(guestProxies, certs));
    return this.instance('guest-runtime', os, {}, at);
  }

  /**
   * Hashing and (de)compression on worker threads, up to one per core, started as the work needs
   * them; the first few MiB on this thread, so a small job starts none. Created on first use.
   * Only Ferry's own compressors run on this thread: with a third-party compressor installed every
   * block goes to the threads, where a compressor that crashes or exits takes down one worker
   * (WORKER_FAILED), not the session.
   */
  codec(): Promise<BlockCodec> {
    const ours = [...this.plugins.providers('compressor')].every((p) => p.startsWith('@ferry/'));
    const inline = ours ? { compressor: (name: string) => this.plugins.create('compressor', name, this.plugins.container), bytes: INLINE_CODEC_BYTES } : undefined;
    this.codecPromise ??= Promise.resolve(new WorkerBlockCodec(workerPlugins(this.plugins), undefined, this.idKey, inline));
    return this.codecPromise;
  }

  async close(): Promise<void> {
    await (await this.codecPromise)?.close();
    const backend = this.cache.get(`repository-backend:${this.spec.repository.type}`) as Promise<RepositoryBackend> | undefined;
    const b = await backend?.catch(() => undefined);
    await b?.close?.().catch(() => undefined);
    await this.container.dispose();
  }

  private instance<K extends PluginKind>(kind: K, name: string, config: Record<string, unknown>, at: (string | number)[], slot = ''): Promise<PluginKindMap[K]> {
    const key = `${kind}:${name}${slot && `#${slot}`}`;
    let p = this.cache.get(key) as Promise<PluginKindMap[K]> | undefined;
    if (!p) {
      p = this.plugins.create(kind, name, this.container, config, this.jobFile.where(at));
      this.cache.set(key, p);
    }
    return p;
  }
}

/**
 * Finds every plugin the job names (failing early, at the key, on an unknown one) and the schemas of
 * their job sections, for the second pass of the job file.
 */
async function pluginSchemas(plugins: PluginHost, jobFile: JobFile): Promise<PluginSchemas> {
  const raw = jobFile.raw as {
    source: { host: string };
    repository: { type?: string; server?: string };
    transport?: PluginChoice;
    filters?: PluginChoice[];
    storage?: { compression?: CompressionChoice };
  };
  const at = (c: PluginChoice, p: (string | number)[]): (string | number)[] => (typeof c === 'string' ? p : [...p, 'name']);
  const src = await plugins.registration('source-host', raw.source.host, jobFile.where(['source', 'host']));
  // A repository service (`repository.server`) needs no backend plugin here.
  const repo = raw.repository.server ? undefined : await plugins.registration('repository-backend', raw.repository.type!, jobFile.where(['repository', 'type']));
  const transport = raw.transport ?? 'auto';
  const t = choiceName(transport) === 'auto' ? undefined : await plugins.registration('transport', choiceName(transport), jobFile.where(at(transport, ['transport'])));
  const filters: (JsonSchema | undefined)[] = [];
  for (const [i, f] of (raw.filters ?? DEFAULT_FILTERS).entries()) {
    filters.push((await plugins.registration('block-filter', choiceName(f), jobFile.where(at(f, ['filters', i])))).options.configSchema);
  }
  // Guest runtimes by `guest.os`: an unknown one fails here, at its key, before any session step.
  // (`vms: all` and `vms: { match }` name no VM, so no guest either)
  const vms = (jobFile.raw as { source: { vms: { guest?: { os?: string } }[] | object } }).source.vms;
  for (const [i, vm] of (Array.isArray(vms) ? vms : []).entries()) {
    if (vm.guest?.os) await plugins.registration('guest-runtime', vm.guest.os, jobFile.where(['source', 'vms', i, 'guest', 'os']));
  }
  const compression = raw.storage?.compression ?? 'optimal';
  const compressor =
    typeof compression === 'string'
      ? await plugins.registration('compressor', LEVEL_CODECS[compression].compressor, jobFile.where(['storage', 'compression']))
      : await plugins.registration('compressor', compression.compressor, jobFile.where(['storage', 'compression', 'compressor']));
  return {
    sourceConfig: src.options.configSchema,
    sourceVm: src.options.vmSchema,
    repository: repo?.options.configSchema,
    transport: t?.options.configSchema,
    filters,
    compressor: typeof compression === 'string' ? undefined : compressor.options.configSchema,
  };
}

/**
 * The folder whose `plugins/` and `node_modules/` hold Ferry's plugins: the nearest ancestor of the
 * core package that has a `node_modules` folder (the workspace root, or the project that installed
 * Ferry).
 */

/** `*` any run of characters, `?` one character, everything else itself; the whole name must match. */
export function globMatcher(glob: string): (name: string) => boolean {
  const body = [...glob].map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&'))).join('');
  const re = new RegExp(`^${body}$`, 's');
  return (name) => re.test(name);
}
