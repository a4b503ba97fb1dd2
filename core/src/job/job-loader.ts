import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { LineCounter, parseDocument, isMap, isPair, isScalar, type Document, type Node } from 'yaml';
import type { JsonSchema } from '../contracts/plugin.js';
import type { VmSelection } from '../contracts/source-host.js';
import { FerryError, type ErrorLocation } from '../errors.js';
import { composeJobSchema, coreJobSchema, DEFAULT_BLOCK_SIZE, DEFAULT_PARALLEL_DISKS, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, type CompressionLevel } from './job-schema.js';
import type { RetentionPolicy } from '../maintenance/retention-policy.js';
import { formatSize, parsePercent, parseSize } from './size.js';

export type DocPath = (string | number)[];

export interface JobLoadOptions {
  /**
   * Commands that only read the repository (list, restore) must work when the source is gone (the
   * host lost, the datastore unmounted): paths under `source:` are then resolved but not checked.
   */
  sourceMayBeGone?: boolean;
}

/** A job file that passed the core's checks; plugin sections are validated by `JobFile.complete`. */
export interface JobSpec {
  file: string;
  dir: string;
  job: string;
  pluginDirs: string[];
  source: { host: string; config: Record<string, unknown>; vms: VmSelection[] };
  transport: string;
  repository: {
    type: string;
    config: Record<string, unknown>;
    /** Where the passphrase of an encrypted repository comes from (`repository.encryption`). */
    encryption?: { passphraseFile?: string; passphraseEnv?: string };
    /** `repository.immutability`: restore points cannot be deleted for this many days. */
    immutability?: { days: number };
  };
  storage: { blockSize: number; compression: CompressionLevel };
  /** Disks backed up at once across the job's VMs (`parallelDisks:`, also `storage.parallelDisks`). */
  parallelDisks: number;
  filters: string[];
  /** Restore points to keep per VM (`retention:`); absent: keep every point. */
  retention?: RetentionPolicy;
  /** Health check after each successful session (`verify:`), on a sample of the blocks. */
  verify: { afterBackup: boolean; samplePercent: number };
  /**
   * Remote data movers (`repository: { server }`, `proxies`, `certs`): the session runs through a
   * repository service and proxies, and `repository.type` is empty. Absent: everything embedded.
   */
  remote?: { server: string; proxies: string[]; certs: string };
}

/**
 * A parsed job file that can point at its own source positions: every later error about a key
 * (a missing disk, an unknown plugin) names file:line:column and the key path.
 */
export class JobFile {
  private constructor(
    readonly file: string,
    private readonly doc: Document,
    private readonly lines: LineCounter,
    private data: Record<string, unknown>,
    private readonly opts: JobLoadOptions,
  ) {}

  /** Reads and parses the file and checks the core's keys. */
  static load(file: string, opts: JobLoadOptions = {}): JobFile {
    const abs = path.resolve(file);
    let text: string;
    try {
      text = readFileSync(abs, 'utf8');
    } catch (err) {
      throw new FerryError('JOB_FILE_NOT_FOUND', `cannot read job file: ${(err as NodeJS.ErrnoException).code ?? err}`, {
        file: abs,
      });
    }
    return JobFile.parse(text, abs, opts);
  }

  static parse(text: string, file: string, opts: JobLoadOptions = {}): JobFile {
    const lines = new LineCounter();
    const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: true });
    if (doc.errors.length) {
      const e = doc.errors[0];
      const pos = lines.linePos(e.pos[0]);
      const msg = e.message.split('\n')[0];
      throw new FerryError('JOB_YAML_SYNTAX', msg, { file, line: pos.line, column: pos.col });
    }
    const data = doc.toJS() as unknown;
    const job = new JobFile(file, doc, lines, (data ?? {}) as Record<string, unknown>, opts);
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      throw new FerryError('JOB_INVALID', 'the job file must be a mapping of keys (job, source, repository, ...)', job.where([]));
    }
    job.validate(coreJobSchema(true));
    job.checkRemote();
    return job;
  }

  get dir(): string {
    return path.dirname(this.file);
  }

  /** The values as read (after `complete`: with relative paths resolved). */
  get raw(): Record<string, unknown> {
    return this.data;
  }

  /** Location of the node at `docPath` (or of its nearest existing parent). */
  where(docPath: DocPath): ErrorLocation {
    const loc: ErrorLocation = { file: this.file, path: formatPath(docPath) };
    for (let n = docPath.length; n >= 0; n--) {
      const node = this.doc.getIn(docPath.slice(0, n), true) as Node | undefined;
      const range = node && (node as { range?: [number, number, number] }).range;
      if (range) {
        const p = this.lines.linePos(range[0]);
        return { ...loc, line: p.line, column: p.col };
      }
    }
    return loc;
  }

  /** Location of the key (not the value) `key` inside the mapping at `docPath`. */
  whereKey(docPath: DocPath, key: string): ErrorLocation {
    const map = this.doc.getIn(docPath, true);
    const coll = docPath.length === 0 ? this.doc.contents : map;
    if (isMap(coll)) {
      for (const item of coll.items) {
        if (isPair(item) && isScalar(item.key) && item.key.value === key && item.key.range) {
          const p = this.lines.linePos(item.key.range[0]);
          return { file: this.file, path: formatPath([...docPath, key]), line: p.line, column: p.col };
        }
      }
    }
    return this.where([...docPath, key]);
  }

  /**
   * Second pass: validates the plugin sections against the chosen plugins' schemas and returns the
   * job with defaults applied and relative paths resolved against the job file's folder.
   */
  complete(schemas: { sourceConfig?: JsonSchema; sourceVm?: JsonSchema; repository?: JsonSchema }): JobSpec {
    this.validate(composeJobSchema({ config: schemas.sourceConfig, vm: schemas.sourceVm }, schemas.repository));
    const d = this.data as Record<string, Record<string, unknown>> & { job: string; transport?: string };
    const storage = (d.storage ?? {}) as { blockSize?: unknown; compression?: CompressionLevel };
    const blockSize = storage.blockSize === undefined ? DEFAULT_BLOCK_SIZE : parseSize(storage.blockSize)!;
    if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
      throw new FerryError(
        'JOB_INVALID',
        `block size ${formatSize(blockSize)} is not allowed: use a power of two from 256KiB to 8MiB (256KiB, 512KiB, 1MiB, 4MiB, 8MiB)`,
        this.where(['storage', 'blockSize']),
      );
    }
    const { host, vms, ...sourceConfig } = d.source as { host: string; vms: Record<string, unknown>[] };
    const { type, encryption, immutability, ...repoConfig } = d.repository as { type: string } & Pick<JobSpec['repository'], 'encryption' | 'immutability'>;
    return {
      file: this.file,
      dir: this.dir,
      job: d.job,
      pluginDirs: (d.plugins as unknown as string[] | undefined) ?? [],
      source: {
        host,
        config: sourceConfig,
        vms: vms.map((v) => {
          const { name, disks, ...options } = v as { name: string; disks?: string[] };
          return { name, disks, options };
        }),
      },
      transport: d.transport ?? 'auto',
      repository: { type, config: repoConfig, ...(encryption && { encryption }), ...(immutability && { immutability }) },
      storage: { blockSize, compression: storage.compression ?? 'optimal' },
      parallelDisks: this.parallelDisks(),
      filters: (d.filters as unknown as string[] | undefined) ?? ['zero'],
      ...(d.retention && { retention: d.retention as unknown as RetentionPolicy }),
      verify: { afterBackup: d.verify?.afterBackup === true, samplePercent: parsePercent(d.verify?.sample) ?? 100 },
      ...this.remote(),
    };
  }

  /** `repository.type` or `repository.server` (with `certs`); `proxies` only with a repository service. */
  private checkRemote(): void {
    const repo = this.data.repository as { type?: string; server?: string };
    if (repo.type === undefined && repo.server === undefined) {
      throw new FerryError('JOB_INVALID', 'missing key "type" (or "server", the host:port of a repository service)', {
        ...this.where(['repository']),
        path: 'repository.type',
      });
    }
    if (repo.type !== undefined && repo.server !== undefined) {
      throw new FerryError(
        'JOB_INVALID',
        'name either repository.type (a repository this process writes) or repository.server (a repository service), not both',
        this.whereKey(['repository'], 'server'),
      );
    }
    if (repo.server !== undefined && this.data.certs === undefined) {
      throw new FerryError('JOB_INVALID', 'missing key "certs": a repository service is reached over mutual TLS (ferry certs init DIR)', {
        ...this.where([]),
        path: 'certs',
      });
    }
    if (this.data.proxies !== undefined && repo.server === undefined) {
      throw new FerryError('JOB_INVALID', 'proxies need a repository service (repository: { server: host:port }) that connects to them', this.whereKey([], 'proxies'));
    }
  }

  private remote(): Pick<JobSpec, 'remote'> {
    const server = (this.data.repository as { server?: string }).server;
    if (server === undefined) return {};
    const proxies = ((this.data.proxies as { address: string }[] | undefined) ?? []).map((p) => p.address);
    return { remote: { server, proxies, certs: this.data.certs as string } };
  }

  /** `parallelDisks` at the top level, or under `storage:` (the same key); both must agree. */
  private parallelDisks(): number {
    const top = this.data.parallelDisks as number | undefined;
    const inStorage = (this.data.storage as { parallelDisks?: number } | undefined)?.parallelDisks;
    if (top !== undefined && inStorage !== undefined && top !== inStorage) {
      throw new FerryError(
        'JOB_INVALID',
        `parallelDisks is ${top} here but storage.parallelDisks is ${inStorage}: set it once (top level)`,
        this.where(['storage', 'parallelDisks']),
      );
    }
    return top ?? inStorage ?? DEFAULT_PARALLEL_DISKS;
  }

  private validate(schema: JsonSchema): void {
    const ajv = new Ajv({ allErrors: false, strict: false, useDefaults: false, verbose: true });
    const pathErrors: { docPath: DocPath; message: string }[] = [];
    const baseDir = this.dir;
    ajv.addKeyword({
      keyword: 'ferryPath',
      modifying: true,
      schemaType: 'string',
      validate: (kind: string, value: unknown, _s: unknown, ctx?: { instancePath: string; parentData: unknown; parentDataProperty: string | number }) => {
        if (typeof value !== 'string' || !ctx) return true;
        const resolved = path.resolve(baseDir, value);
        (ctx.parentData as Record<string | number, unknown>)[ctx.parentDataProperty] = resolved;
        const docPath = pointerToPath(ctx.instancePath);
        const skip = this.opts.sourceMayBeGone && docPath[0] === 'source';
        if (!skip && (kind === 'directory' || kind === 'file')) {
          let ok = false;
          try {
            const st = statSync(resolved);
            ok = kind === 'directory' ? st.isDirectory() : st.isFile() || st.isBlockDevice();
          } catch {
            ok = false;
          }
          if (!ok) pathErrors.push({ docPath, message: `${kind} not found: ${resolved}` });
        }
        return true;
      },
    });
    ajv.addKeyword({
      keyword: 'ferryPercent',
      validate: (_k: boolean, value: unknown) => parsePercent(value) !== undefined,
      error: { message: 'must be a share of the blocks such as 5%, 25% or 100%' },
    });
    ajv.addKeyword({
      keyword: 'ferryAddress',
      validate: (_k: boolean, value: unknown) => typeof value === 'string' && /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$/.test(value),
      error: { message: 'must be an address host:port (or [v6 address]:port)' },
    });
    ajv.addKeyword({
      keyword: 'ferrySize',
      validate: (_k: boolean, value: unknown) => parseSize(value) !== undefined,
      error: { message: 'must be a size such as 256KiB, 1MiB or 4MiB' },
    });
    const validate = ajv.compile(schema);
    if (!validate(this.data)) throw this.schemaError(validate.errors![0]);
    if (pathErrors.length) {
      const e = pathErrors[0];
      throw new FerryError('JOB_PATH_NOT_FOUND', e.message, this.where(e.docPath));
    }
  }

  private schemaError(e: ErrorObject): FerryError {
    const at = pointerToPath(e.instancePath);
    const p = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case 'additionalProperties': {
        const key = String(p.additionalProperty);
        const allowed = Object.keys((e.parentSchema?.properties as object | undefined) ?? {});
        return new FerryError('JOB_INVALID', `unknown key "${key}"; allowed here: ${allowed.join(', ')}`, this.whereKey(at, key));
      }
      case 'required': {
        const key = String(p.missingProperty);
        return new FerryError('JOB_INVALID', `missing key "${key}"`, { ...this.where(at), path: formatPath([...at, key]) });
      }
      case 'enum':
        return new FerryError('JOB_INVALID', `must be one of: ${(p.allowedValues as unknown[]).join(', ')}`, this.where(at));
      default:
        return new FerryError('JOB_INVALID', `${formatPath(at) || 'document'} ${e.message ?? 'is invalid'}`, this.where(at));
    }
  }
}

function pointerToPath(pointer: string): DocPath {
  if (!pointer) return [];
  return pointer
    .split('/')
    .slice(1)
    .map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'))
    .map((s) => (/^\d+$/.test(s) ? Number(s) : s));
}

/** `['source','vms',0,'disks']` → `source.vms[0].disks`. */
export function formatPath(p: DocPath): string {
  let out = '';
  for (const seg of p) out += typeof seg === 'number' ? `[${seg}]` : out ? `.${seg}` : seg;
  return out;
}
