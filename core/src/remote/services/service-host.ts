import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { FerryError } from '../../errors.js';
import type { BlockCodec } from '../../repository/block-codec.js';
import { WorkerBlockCodec, workerPlugins } from '../../pipe/worker-block-codec.js';
import type { PluginHost } from '../../plugins/plugin-host.js';
import { jobPassphrase } from '../../repository/passphrase.js';
import { Repository } from '../../repository/repository.js';
import { createPluginHost } from '../../plugins/create-plugin-host.js';
import { servePeers, type PeerAuth, type PeerRole, type PeerService } from '../wire/index.js';
import { ProxyService } from './proxy-service.js';
import { RepositoryService } from './repository-service.js';

/**
 * What `ferry proxy serve` and `ferry repository serve` start: the listener, the service behind it,
 * and its configuration from the command line and an optional YAML file (`--config FILE`).
 *
 * Config file keys (all optional; the command line wins):
 *   listen: 127.0.0.1:9000      certs: DIR (relative to the file)
 *   psk: { identity: NAME, keyFile: FILE }  (the data pipe between repository service and proxies
 *                                            with a pre-shared key instead of certificates, >= 16
 *                                            bytes as hex; backup servers always use certificates)
 *   allow: { names: [ NAME, ... ] }         (certificate CNs or PSK identities allowed to connect)
 *   taskSlots: 4                            (proxy: disks read at the same time)
 *   repository: PATH | FILE.yaml            (repository service: a filesystem folder, or a YAML
 *                                            file { type, ...backend config, encryption? })
 *   resumeWindowSeconds: 30, window: 32     (repository service: retry window, in-flight blocks)
 */
export interface ServiceConfig {
  listen?: string;
  certs?: string;
  psk?: { identity: string; key: Buffer };
  allow?: { names?: string[] };
  taskSlots?: number;
  repository?: string;
  resumeWindowSeconds?: number;
  window?: number;
  heartbeatMs?: number;
}

export interface RunningService {
  host: string;
  port: number;
  close(): Promise<void>;
}

const KEYS = ['listen', 'certs', 'psk', 'allow', 'taskSlots', 'repository', 'resumeWindowSeconds', 'window', 'heartbeatMs'];

/** Reads a service config file; paths in it are relative to the file. Errors name the file and key. */
export function loadServiceConfig(file: string): ServiceConfig {
  const abs = path.resolve(file);
  const bad = (key: string, msg: string): FerryError => new FerryError('CLI_USAGE', `${key}: ${msg}`, { file: abs, path: key });
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(abs, 'utf8'));
  } catch (err) {
    throw new FerryError('CLI_USAGE', `cannot read the service config: ${(err as Error).message}`, { file: abs });
  }
  if (raw === null || raw === undefined) return {};
  if (typeof raw !== 'object' || Array.isArray(raw)) throw new FerryError('CLI_USAGE', 'the service config must be a mapping of keys', { file: abs });
  const c = raw as Record<string, unknown>;
  for (const k of Object.keys(c)) if (!KEYS.includes(k)) throw bad(k, `unknown key; allowed: ${KEYS.join(', ')}`);
  const dir = path.dirname(abs);
  const out: ServiceConfig = {};
  const str = (k: string): string | undefined => {
    if (c[k] === undefined) return undefined;
    if (typeof c[k] !== 'string' || !c[k]) throw bad(k, 'must be a non-empty string');
    return c[k] as string;
  };
  const int = (k: string, min: number): number | undefined => {
    if (c[k] === undefined) return undefined;
    if (!Number.isInteger(c[k]) || (c[k] as number) < min) throw bad(k, `must be an integer >= ${min}`);
    return c[k] as number;
  };
  out.listen = str('listen');
  const certs = str('certs');
  if (certs) out.certs = path.resolve(dir, certs);
  const repo = str('repository');
  if (repo) out.repository = path.resolve(dir, repo);
  out.taskSlots = int('taskSlots', 1);
  out.resumeWindowSeconds = int('resumeWindowSeconds', 1);
  out.window = int('window', 1);
  out.heartbeatMs = int('heartbeatMs', 100);
  if (c.allow !== undefined) {
    const names = (c.allow as { names?: unknown })?.names;
    if (!Array.isArray(names) || !names.every((n) => typeof n === 'string')) throw bad('allow', 'must be { names: [ NAME, ... ] }');
    out.allow = { names };
  }
  if (c.psk !== undefined) {
    const p = c.psk as { identity?: unknown; keyFile?: unknown };
    if (typeof p?.identity !== 'string' || typeof p.keyFile !== 'string') throw bad('psk', 'must be { identity: NAME, keyFile: FILE }');
    const keyFile = path.resolve(dir, p.keyFile);
    let key: Buffer;
    try {
      key = Buffer.from(readFileSync(keyFile, 'utf8').trim(), 'hex');
    } catch (err) {
      throw bad('psk.keyFile', `cannot read ${keyFile}: ${(err as NodeJS.ErrnoException).code}`);
    }
    if (key.length < 16) throw bad('psk.keyFile', `${keyFile} must hold at least 16 bytes as hex`);
    out.psk = { identity: p.identity, key };
  }
  for (const k of Object.keys(out) as (keyof ServiceConfig)[]) if (out[k] === undefined) delete out[k];
  return out;
}

/** The data pipe (repository service ↔ proxy): the pre-shared key when one is configured, else certificates. */
function pipeAuth(c: ServiceConfig, role: PeerRole): PeerAuth {
  if (c.psk) return { kind: 'psk', key: c.psk.key, identity: c.psk.identity, role };
  return certAuth(c, role, 'or a psk in --config FILE');
}

/** Control connections from backup servers: always certificates (a job names `certs:`). */
function certAuth(c: ServiceConfig, role: PeerRole, alternative = ''): PeerAuth {
  if (!c.certs) throw new FerryError('CLI_USAGE', `name --certs DIR (made by \`ferry certs init DIR\`)${alternative ? ` ${alternative}` : ''}`);
  return { kind: 'certs', dir: path.resolve(c.certs), role };
}

function need<T>(v: T | undefined, what: string): T {
  if (v === undefined) throw new FerryError('CLI_USAGE', `missing ${what}`);
  return v;
}

/**
 * Codecs by block-id key, created on first use, all closed with the service. `warm`: the plain
 * (unkeyed) codec is made at once with all its threads started, so the service's first disk does
 * not wait for them (bootstrap and the compressors' import) inside its session.
 */
function codecs(plugins: PluginHost, warm: boolean): { codec: (idKey?: Buffer) => BlockCodec; warm: () => void; close: () => Promise<void> } {
  const byKey = new Map<string, WorkerBlockCodec>();
  const codec = (idKey?: Buffer): WorkerBlockCodec => {
    const k = idKey ? idKey.toString('hex') : '';
    let c = byKey.get(k);
    if (!c) byKey.set(k, (c = new WorkerBlockCodec(workerPlugins(plugins), undefined, idKey)));
    return c;
  };
  return {
    codec,
    // Called once the service listens: a service that fails to start leaves no threads behind.
    warm: () => {
      if (warm) codec().startThreads();
    },
    close: async () => {
      await Promise.all([...byKey.values()].map((c) => c.close()));
    },
  };
}

/** `ferry proxy serve`: accepts data pipes from repository services (role `repository`). */
export async function startProxyService(c: ServiceConfig, log: (line: string) => void = () => undefined): Promise<RunningService> {
  const plugins = await createPluginHost();
  // Every read task hashes and compresses; a task of an encrypted repository gets a keyed codec.
  const pool = codecs(plugins, true);
  const service = new ProxyService({ plugins, codec: pool.codec, taskSlots: c.taskSlots ?? 4, log });
  return serveOn(c, { auth: pipeAuth(c, 'proxy'), accept: 'repository', service, pool, log });
}

/** `ferry repository serve`: accepts control connections from backup servers (role `server`). */
export async function startRepositoryService(c: ServiceConfig, log: (line: string) => void = () => undefined): Promise<RunningService> {
  const plugins = await createPluginHost();
  // The blocks of an unencrypted repository are checked with the plain codec; an encrypted one's
  // (a repository file with `encryption`) need its id key, known once the repository is opened.
  const { open: openRepository, encrypted } = await repositoryOpener(plugins, need(c.repository, '--repository PATH|YAML'));
  const pool = codecs(plugins, !encrypted);
  const service = new RepositoryService({
    openRepository,
    codec: pool.codec,
    auth: pipeAuth(c, 'repository'),
    retryWindowMs: (c.resumeWindowSeconds ?? 30) * 1000,
    window: c.window,
    heartbeatMs: c.heartbeatMs,
    log,
  });
  return serveOn(c, { auth: certAuth(c, 'repository'), accept: 'server', service, pool, log });
}

/** Listens for the one peer role a service accepts; closing stops listening, then the service, then its workers. */
async function serveOn(
  c: ServiceConfig,
  parts: { auth: PeerAuth; accept: PeerRole; service: PeerService; pool: { warm(): void; close(): Promise<void> }; log: (line: string) => void },
): Promise<RunningService> {
  const { pool, ...rest } = parts;
  const running = await servePeers({ ...rest, listen: need(c.listen, '--listen HOST:PORT'), names: c.allow?.names, heartbeatMs: c.heartbeatMs, after: () => pool.close() });
  pool.warm();
  return running;
}

/**
 * `--repository PATH` is a filesystem repository folder; `--repository FILE.yaml` names a backend
 * `{ type, ...config }` (with `encryption: { passphraseFile | passphraseEnv }` and
 * `immutability: { days }` as in a job's repository section; paths relative to the file).
 */
async function repositoryOpener(plugins: PluginHost, spec: string): Promise<{ open: RepositoryService['opts']['openRepository']; encrypted: boolean }> {
  const abs = path.resolve(spec);
  let type = 'filesystem';
  let config: Record<string, unknown> = { path: abs };
  let encryption: { passphraseFile?: string; passphraseEnv?: string } | undefined;
  let immutability: { days: number } | undefined;
  if (/\.ya?ml$/i.test(abs)) {
    let raw: Record<string, unknown>;
    try {
      raw = parseYaml(readFileSync(abs, 'utf8')) as Record<string, unknown>;
    } catch (err) {
      throw new FerryError('CLI_USAGE', `cannot read the repository file: ${(err as Error).message}`, { file: abs });
    }
    if (typeof raw?.type !== 'string') throw new FerryError('CLI_USAGE', 'missing key "type" (the repository backend, e.g. filesystem)', { file: abs, path: 'type' });
    ({ type, encryption, immutability, ...config } = raw as { type: string; encryption?: typeof encryption; immutability?: typeof immutability });
    if (typeof config.path === 'string') config.path = path.resolve(path.dirname(abs), config.path);
    if (encryption?.passphraseFile) encryption = { passphraseFile: path.resolve(path.dirname(abs), encryption.passphraseFile) };
  }
  const backend = await plugins.create('repository-backend', type, plugins.container, config, { file: abs });
  const open: RepositoryService['opts']['openRepository'] = (opts) =>
    Repository.open(backend, {
      ...opts,
      passphrase: jobPassphrase(encryption, abs),
      settings: { encrypted: encryption ? true : undefined, immutabilityDays: immutability?.days },
    });
  return { open, encrypted: encryption !== undefined };
}
