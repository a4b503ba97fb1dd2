import { realpathSync } from 'node:fs';
import path from 'node:path';
import type { ErrorObject } from 'ajv';
import type { Document, LineCounter, Node } from 'yaml';
import { yamlLib } from './yaml-lib.js';
import { compileSchema, type ContextKeyword, type KeywordFunction } from './schema-cache.js';
import { cachedJobValues, keepJobValues } from './job-values-cache.js';
import type { JsonSchema } from '../contracts/plugin.js';
import type { VmSelection } from '../contracts/source-host.js';
import { FerryError, type ErrorLocation } from '../errors.js';
import { LEVEL_CODECS } from '../compression/levels.js';
import {
  composeJobSchema,
  coreJobSchema,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_PARALLEL_DISKS,
  MAX_BLOCK_SIZE,
  MIN_BLOCK_SIZE,
  type CompressionLevel,
  type PluginSchemas,
} from './job-schema.js';
import type { RetentionPolicy } from '../maintenance/retention-policy.js';
import { formatSize, parsePercent, parseSize } from './size.js';
import { checkAliases, firstDuplicateKey, jobFileTooLarge, MAX_JOB_FILE_BYTES, readJobText } from './yaml-limits.js';

import type { DocPath } from './job-context.js';
import { pathExists } from './ferry-path.js';
import { guestSpec, type GuestSpec } from './guest-spec.js';
export type { DocPath };

/** `vms: all`, or `vms: { match: "web*" }` (`*` any characters, `?` one). */
export type VmPattern = 'all' | { match: string };

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
  /**
   * `vms`: the VMs the job lists; with `select` (`vms: all` or `vms: { match: GLOB }`) empty until
   * `JobRuntime.resolveVms` asks the source host for its VMs.
   */
  source: { host: string; config: Record<string, unknown>; vms: VmSelection[]; select?: VmPattern };
  /** Transport name (`auto`, `hotadd`, `nbd`, a plugin's), from `transport: NAME` or `{ name: NAME, ... }`. */
  transport: string;
  /** The transport's options (the mapping's other keys, validated by its `configSchema`); `{}` when none. */
  transportOptions: Record<string, unknown>;
  repository: {
    type: string;
    config: Record<string, unknown>;
    /** Where the passphrase of an encrypted repository comes from (`repository.encryption`). */
    encryption?: { passphraseFile?: string; passphraseEnv?: string };
    /** `repository.immutability`: restore points cannot be deleted for this many days. */
    immutability?: { days: number };
  };
  storage: {
    blockSize: number;
    /** What the job asked for, as reports show it: a level name, or `NAME level N`. */
    compression: string;
    /** The compressor every new block goes through and the level it is called with. */
    compressor: { name: string; level: number };
  };
  /** Disks backed up at once across the job's VMs (`parallelDisks:`, also `storage.parallelDisks`). */
  parallelDisks: number;
  filters: string[];
  /** Per item of `filters`, its options (validated by the filter's `configSchema`); `{}` when none. */
  filterOptions: Record<string, unknown>[];
  /** Restore points to keep per VM (`retention:`); absent: keep every point. */
  retention?: RetentionPolicy;
  /** `copyTo:` repository YAML files (absolute) each new restore point is copied to after the session. */
  copyTo?: string[];
  /** Health check after each successful session (`verify:`), on a sample of the blocks. */
  verify: { afterBackup: boolean; samplePercent: number };
  /**
   * Remote data movers (`repository: { server }`, `proxies`, `certs`): the session runs through a
   * repository service and proxies, and `repository.type` is empty. Absent: everything embedded.
   */
  remote?: { server: string; proxies: string[]; certs: string };
  /** Guest processing per VM name (`source.vms[i].guest`); VMs without it are crash-consistent. */
  guests: Record<string, GuestSpec>;
  /** `guestProxies:` hosts that do the guest work instead of this one (`host:port`). */
  guestProxies?: string[];
  /** The job's `certs:` folder (mutual TLS to a repository service, proxies and guest proxies). */
  certs?: string;
}

/**
 * A parsed job file that can point at its own source positions: every later error about a key
 * (a missing disk, an unknown plugin) names file:line:column and the key path.
 */
export class JobFile {
  private constructor(
    readonly file: string,
    private readonly text: string,
    private parsed: { doc: Document; lines: LineCounter } | undefined,
    private data: Record<string, unknown>,
    private readonly opts: JobLoadOptions,
    /** From the values cache: the positions `where`/`whereKey` give, without parsing the text again. */
    private readonly positions?: JobPositions,
  ) {}

  /** The YAML document with its positions; parsed again on first use when the values came from the cache. */
  private get yaml(): { doc: Document; lines: LineCounter } {
    return (this.parsed ??= JobFile.parseText(this.text, this.file));
  }
  private get doc(): Document {
    return this.yaml.doc;
  }
  private get lines(): LineCounter {
    return this.yaml.lines;
  }

  /** Reads and parses the file and checks the core's keys. */
  static load(file: string, opts: JobLoadOptions = {}): JobFile {
    const abs = path.resolve(file);
    const text = readJobText(abs);
    return JobFile.parse(text, abs, opts);
  }

  static parse(text: string, file: string, opts: JobLoadOptions = {}): JobFile {
    const bytes = Buffer.byteLength(text);
    if (bytes > MAX_JOB_FILE_BYTES) throw jobFileTooLarge(file, `${bytes} bytes`);
    const cached = cachedJobValues(text) as { values: unknown; positions: JobPositions } | undefined;
    let data = cached?.values;
    let parsed: { doc: Document; lines: LineCounter } | undefined;
    if (!cached) {
      parsed = JobFile.parseText(text, file);
      data = JobFile.toValues(parsed.doc, parsed.lines, file);
      const positions = positionsOf(parsed.doc, parsed.lines);
      if (positions) keepJobValues(text, data, positions);
    }
    const job = new JobFile(file, text, parsed, (data ?? {}) as Record<string, unknown>, opts, cached?.positions);
    if (typeof data !== 'object' || data === null || Array.isArray(data)) {
      throw new FerryError('JOB_INVALID', 'the job file must be a mapping of keys (job, source, repository, ...)', job.where([]));
    }
    job.validate(coreJobSchema(true));
    job.checkRemote();
    job.checkVmsListedOnce();
    return job;
  }

  /** The YAML document of `text`; a syntax error is JOB_YAML_SYNTAX at its position. */
  private static parseText(text: string, file: string): { doc: Document; lines: LineCounter } {
    const { LineCounter, parseDocument } = yamlLib();
    const lines = new LineCounter();
    // `uniqueKeys` is checked by `toValues`, in linear time
    const doc = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
    if (doc.errors.length) {
      const e = doc.errors[0];
      const pos = lines.linePos(e.pos[0]);
      const msg = e.message.split('\n')[0];
      throw new FerryError('JOB_YAML_SYNTAX', msg, { file, line: pos.line, column: pos.col });
    }
    return { doc, lines };
  }

  /**
   * The document as plain values, once its keys are known to be unique and its aliases bounded
   * (`checkAliases`): an alias bomb or a 1 MiB file of aliases is refused as `JOB_INVALID` at the
   * alias, quickly.
   */
  private static toValues(doc: Document, lines: LineCounter, file: string): unknown {
    try {
      const dup = firstDuplicateKey(doc);
      if (dup) {
        const pos = dup.offset === undefined ? { line: 1, col: 1 } : lines.linePos(dup.offset);
        throw new FerryError('JOB_YAML_SYNTAX', `Map keys must be unique ("${dup.key}" is repeated)`, { file, line: pos.line, column: pos.col });
      }
      const problem = checkAliases(doc);
      if (problem) {
        const pos = problem.offset === undefined ? undefined : lines.linePos(problem.offset);
        throw new FerryError('JOB_INVALID', problem.detail, { file, ...(pos && { line: pos.line, column: pos.col }), path: formatPath(problem.docPath) });
      }
      // The check above bounds what the aliases cost; the package's own count would refuse
      // harmless files with `INTERNAL` (a ReferenceError).
      return doc.toJS({ maxAliasCount: -1 }) as unknown;
    } catch (err) {
      if (!(err instanceof RangeError)) throw err;
      throw new FerryError('JOB_INVALID', 'the job file is nested too deeply to read', { file, line: 1, column: 1 });
    }
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
    if (this.positions && !this.parsed) {
      for (let n = docPath.length; n >= 0; n--) {
        const p = this.positions.at[JSON.stringify(docPath.slice(0, n))];
        if (p) return { ...loc, line: p[0], column: p[1] };
      }
      return loc;
    }
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
    if (this.positions && !this.parsed) {
      const p = this.positions.keys[JSON.stringify([...docPath, key])];
      return p ? { file: this.file, path: formatPath([...docPath, key]), line: p[0], column: p[1] } : this.where([...docPath, key]);
    }
    const map = this.doc.getIn(docPath, true);
    const coll = docPath.length === 0 ? this.doc.contents : map;
    const { isMap, isPair, isScalar } = yamlLib();
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
  complete(schemas: PluginSchemas): JobSpec {
    this.validate(composeJobSchema(schemas, this.data));
    const d = this.data as Record<string, Record<string, unknown>> & { job: string; transport?: PluginChoice; filters?: PluginChoice[] };
    const storage = (d.storage ?? {}) as { blockSize?: unknown; compression?: CompressionChoice };
    const blockSize = storage.blockSize === undefined ? DEFAULT_BLOCK_SIZE : parseSize(storage.blockSize)!;
    if (blockSize < MIN_BLOCK_SIZE || blockSize > MAX_BLOCK_SIZE || (blockSize & (blockSize - 1)) !== 0) {
      throw new FerryError(
        'JOB_INVALID',
        `block size ${formatSize(blockSize)} is not allowed: use a power of two from 256KiB to 8MiB (256KiB, 512KiB, 1MiB, 4MiB, 8MiB)`,
        this.where(['storage', 'blockSize']),
      );
    }
    const { host, vms, ...sourceConfig } = d.source as { host: string; vms: Record<string, unknown>[] | VmPattern };
    const { type, encryption, immutability, ...repoConfig } = d.repository as { type: string } & Pick<JobSpec['repository'], 'encryption' | 'immutability'>;
    return {
      file: this.file,
      dir: this.dir,
      job: d.job,
      pluginDirs: (d.plugins as unknown as string[] | undefined) ?? [],
      source: {
        host,
        config: sourceConfig,
        vms: Array.isArray(vms)
          ? vms.map((v) => {
              const { name, disks, guest: _guest, ...options } = v as { name: string; disks?: string[]; guest?: unknown };
              return { name, disks, options };
            })
          : [],
        ...(!Array.isArray(vms) && { select: vms }),
      },
      guests: Array.isArray(vms) ? this.guests(vms) : {},
      ...(d.guestProxies && { guestProxies: (d.guestProxies as unknown as { address: string }[]).map((p) => p.address) }),
      ...(d.certs !== undefined && { certs: d.certs as unknown as string }),
      transport: choiceName(d.transport ?? 'auto'),
      transportOptions: choiceOptions(d.transport ?? 'auto'),
      repository: { type, config: repoConfig, ...(encryption && { encryption }), ...(immutability && { immutability }) },
      storage: { blockSize, ...compressionOf(storage.compression ?? 'optimal', schemas.compressor) },
      parallelDisks: this.parallelDisks(),
      filters: (d.filters ?? DEFAULT_FILTERS).map(choiceName),
      filterOptions: (d.filters ?? DEFAULT_FILTERS).map(choiceOptions),
      ...(d.retention && { retention: d.retention as unknown as RetentionPolicy }),
      ...(d.copyTo && { copyTo: d.copyTo as unknown as string[] }),
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
    if (this.data.guestProxies !== undefined && this.data.certs === undefined) {
      throw new FerryError('JOB_INVALID', 'missing key "certs": guest proxies are reached over mutual TLS (ferry certs init DIR)', { ...this.where([]), path: 'certs' });
    }
    if (this.data.proxies !== undefined && repo.server === undefined) {
      throw new FerryError('JOB_INVALID', 'proxies need a repository service (repository: { server: host:port }) that connects to them', this.whereKey([], 'proxies'));
    }
  }

  /**
   * Each VM once and each of its disks once, for every source host: two entries with one name are
   * backed up under that name and the restore point keeps only one of them.
   */
  private checkVmsListedOnce(): void {
    const vms = (this.data.source as { vms: { name: string; disks?: string[] }[] }).vms;
    if (!Array.isArray(vms)) return;
    const short = (l: ErrorLocation): string => `${path.basename(this.file)}:${l.line}:${l.column}`;
    const firstVm = new Map<string, number>();
    for (const [i, vm] of vms.entries()) {
      const first = firstVm.get(vm.name);
      if (first !== undefined) {
        const at = this.whereKey(['source', 'vms', i], 'name');
        const before = short(this.whereKey(['source', 'vms', first], 'name'));
        throw new FerryError('JOB_INVALID', `vm "${vm.name}" is listed twice (${before} and ${short(at)}); list each VM once with all its disks`, at);
      }
      firstVm.set(vm.name, i);
      const firstDisk = new Map<string, number>();
      for (const [j, disk] of (vm.disks ?? []).entries()) {
        const seen = firstDisk.get(disk);
        if (seen !== undefined) {
          const at = this.where(['source', 'vms', i, 'disks', j]);
          const before = short(this.where(['source', 'vms', i, 'disks', seen]));
          throw new FerryError('JOB_INVALID', `disk "${disk}" of vm "${vm.name}" is listed twice (${before} and ${short(at)}); list each disk once`, at);
        }
        firstDisk.set(disk, j);
      }
    }
  }

  private remote(): Pick<JobSpec, 'remote'> {
    const server = (this.data.repository as { server?: string }).server;
    if (server === undefined) return {};
    const proxies = ((this.data.proxies as { address: string }[] | undefined) ?? []).map((p) => p.address);
    return { remote: { server, proxies, certs: this.data.certs as string } };
  }

  private guests(vms: Record<string, unknown>[]): Record<string, GuestSpec> {
    const out: Record<string, GuestSpec> = {};
    for (const [i, v] of vms.entries()) {
      if (v.guest) out[v.name as string] = guestSpec(v.guest as Parameters<typeof guestSpec>[0], this.dir, ['source', 'vms', i, 'guest'], (p) => this.where(p));
    }
    return out;
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

  /** Problems the path keywords found during the current `validate` call. */
  private pathErrors: { docPath: DocPath; message: string; code: 'JOB_PATH_NOT_FOUND' | 'JOB_INVALID' }[] = [];
  private validate(schema: JsonSchema): void {
    this.pathErrors = [];
    const validate = compileSchema(schema, JOB_KEYWORDS);
    if (!validate.call((this.keywordFns ??= this.keywordFunctions()), this.data)) throw this.schemaError(validate.errors![0]);
    if (this.pathErrors.length) {
      const e = this.pathErrors[0];
      throw new FerryError(e.code, e.message, this.where(e.docPath));
    }
  }

  private keywordFns?: Record<string, KeywordFunction>;

  /** The functions behind `JOB_KEYWORDS`, for this file (its folder, its options, its path problems). */
  private keywordFunctions(): Record<string, KeywordFunction> {
    const baseDir = this.dir;
    return {
      // The `ferryPath` keyword (`docs/plugin-guide.md`): a string value is a path, made absolute
      // against the job file's folder in place, and checked for what its kind says.
      ferryPath: (kind, value, _s, ctx) => {
        if (typeof value !== 'string' || typeof kind !== 'string') return true;
        const resolved = path.resolve(baseDir, value);
        (ctx.parentData as Record<string | number, unknown>)[ctx.parentDataProperty] = resolved;
        // read when called: `remote` is known from the first pass's data
        const remote = (this.data.repository as { server?: string } | undefined)?.server !== undefined;
        const docPath = pointerToPath(ctx.instancePath);
        // With a repository service the transport and filters run on the proxies: their paths are
        // made absolute here and must exist on the proxy host, which checks them (REMOTE_PLUGIN_OPTIONS).
        const onProxy = remote && (docPath[0] === 'transport' || docPath[0] === 'filters');
        const skip = (this.opts.sourceMayBeGone && docPath[0] === 'source') || onProxy;
        if (!skip && (kind === 'directory' || kind === 'file') && !pathExists(resolved, kind)) {
          this.pathErrors.push({ docPath, message: `${kind} not found: ${resolved}`, code: 'JOB_PATH_NOT_FOUND' });
        }
        return true;
      },
      // A path that must stay inside the folder another key names (a disk inside `source.datastore`),
      // symbolic links followed unless the source may be gone. The value is left as written.
      ferryPathIn: (basePointer, value, _s, ctx) => {
        if (typeof value !== 'string' || typeof basePointer !== 'string') return true;
        const basePath = pointerToPath(basePointer);
        const base = basePath.reduce<unknown>((o, k) => (o as Record<string | number, unknown> | undefined)?.[k], ctx.rootData);
        if (typeof base !== 'string') return true;
        const docPath = pointerToPath(ctx.instancePath);
        const root = path.resolve(baseDir, base);
        const follow = !(this.opts.sourceMayBeGone && docPath[0] === 'source');
        const escape = pathOutside(root, value, follow);
        if (escape) {
          this.pathErrors.push({
            docPath,
            code: 'JOB_INVALID',
            message: `"${value}" resolves to ${escape.to}${escape.viaLink ? ' (through a symbolic link)' : ''}, outside ${formatPath(basePath)} (${root}); name only files inside it`,
          });
        }
        return true;
      },
      ferryPercent: (_k, value) => parsePercent(value) !== undefined,
      ferryAddress: (_k, value) => typeof value === 'string' && /^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$/.test(value),
      ferryVms: (_k, value) => Array.isArray(value) || value === 'all' || (typeof value === 'object' && value !== null),
      ferrySize: (_k, value) => parseSize(value) !== undefined,
    };
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

/**
 * Where each node of a job file is, as `where` and `whereKey` find it in the document: `at` by the
 * node's path (the value's position), `keys` by the path of a mapping's key (the key's position),
 * both keyed by `JSON.stringify(path)`, as `[line, column]`. Kept with the values in the cache.
 */
interface JobPositions {
  at: Record<string, [number, number]>;
  keys: Record<string, [number, number]>;
}

/** Nodes a job file may have for its positions to be kept (a larger file is parsed on every run). */
const MAX_POSITIONS = 20_000;

/** The positions of every node `doc.getIn` can reach (aliases are not followed, as there). */
function positionsOf(doc: Document, lines: LineCounter): JobPositions | undefined {
  const { isMap, isPair, isScalar, isSeq } = yamlLib();
  const out: JobPositions = { at: {}, keys: {} };
  let count = 0;
  const pos = (offset: number): [number, number] => {
    const p = lines.linePos(offset);
    return [p.line, p.col];
  };
  const walk = (node: unknown, p: DocPath): boolean => {
    if (++count > MAX_POSITIONS) return false;
    const range = (node as { range?: [number, number, number] } | null)?.range;
    if (range) out.at[JSON.stringify(p)] = pos(range[0]);
    if (isMap(node)) {
      for (const item of node.items) {
        if (!isPair(item) || !isScalar(item.key)) continue;
        const k = item.key.value;
        if (typeof k !== 'string' && typeof k !== 'number') continue;
        if (item.key.range) out.keys[JSON.stringify([...p, k])] = pos(item.key.range[0]);
        if (!walk(item.value, [...p, k])) return false;
      }
    } else if (isSeq(node)) {
      for (const [i, item] of node.items.entries()) if (!walk(item, [...p, i])) return false;
    }
    return true;
  };
  return walk(doc.contents, []) ? out : undefined;
}

/** Ferry's own schema keywords in job files (the functions: `JobFile.keywordFunctions`). */
const JOB_KEYWORDS: readonly ContextKeyword[] = [
  { keyword: 'ferryPath', schemaType: 'string', modifying: true },
  { keyword: 'ferryPathIn', schemaType: 'string' },
  { keyword: 'ferryPercent', error: { message: 'must be a share of the blocks such as 5%, 25% or 100%' } },
  { keyword: 'ferryAddress', error: { message: 'must be an address host:port (or [v6 address]:port)' } },
  { keyword: 'ferryVms', error: { message: 'must be a list of VMs (- name: web01), all, or { match: "web*" }' } },
  { keyword: 'ferrySize', error: { message: 'must be a size such as 256KiB, 1MiB or 4MiB' } },
];

/** The block filters of a job without `filters:`: zero blocks, then swap and pagefile areas found on the disk. */
export const DEFAULT_FILTERS: readonly PluginChoice[] = ['zero', 'swap'];

/** `transport:` or a `filters:` item: a plugin's name, or a mapping of its name and options. */
export type PluginChoice = string | ({ name: string } & Record<string, unknown>);
/** `storage.compression:` a level, or a compressor by name with the level it is called with. */
export type CompressionChoice = CompressionLevel | { compressor: string; level?: number };

export function choiceName(c: PluginChoice): string {
  return typeof c === 'string' ? c : c.name;
}

export function choiceOptions(c: PluginChoice): Record<string, unknown> {
  if (typeof c === 'string') return {};
  const { name: _name, ...options } = c;
  return options;
}

/**
 * The compressor and level of `storage.compression`. Without `level`, the compressor's declared
 * default (`configSchema.properties.level.default`), else 0.
 */
function compressionOf(c: CompressionChoice, schema: JsonSchema | undefined): Pick<JobSpec['storage'], 'compression' | 'compressor'> {
  if (typeof c === 'string') return { compression: c, compressor: { name: LEVEL_CODECS[c].compressor, level: LEVEL_CODECS[c].level } };
  const declared = (schema?.properties as Record<string, { default?: unknown }> | undefined)?.level?.default;
  const level = c.level ?? (Number.isInteger(declared) ? (declared as number) : 0);
  return { compression: `${c.compressor} level ${level}`, compressor: { name: c.compressor, level } };
}

/**
 * Where `name` (relative to `root`, or absolute) leads when that is outside `root`; undefined when
 * inside. With `follow`, symbolic links in both are resolved (a missing file by its nearest existing
 * parent, so a link to a folder outside is caught before the file exists).
 */
function pathOutside(root: string, name: string, follow: boolean): { to: string; viaLink: boolean } | undefined {
  const lexical = path.resolve(root, name);
  if (!isInside(root, lexical)) return { to: lexical, viaLink: false };
  if (!follow) return undefined;
  const realRoot = realpathOrParent(root);
  const real = realpathOrParent(lexical);
  return isInside(realRoot, real) ? undefined : { to: real, viaLink: true };
}

function isInside(root: string, p: string): boolean {
  const rel = path.relative(root, p);
  return rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel);
}

function realpathOrParent(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    const parent = path.dirname(p);
    return parent === p ? p : path.join(realpathOrParent(parent), path.basename(p));
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
