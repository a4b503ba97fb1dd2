import { randomBytes, randomUUID } from 'node:crypto';
import type { ChangeTracking } from '../contracts/source-host.js';
import type { RepositoryBackend, StorageProtection } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import { BlockMap } from './block-map.js';
import { BlockStore, type WriteMeter } from './block-store.js';
import { RepositoryCipher } from './repository-cipher.js';
import { DEFAULT_SCRYPT, KEYS_PREFIX, newMasterKeys, openKeys, rewrapKeys, writeKeyObject, type ScryptParams } from './repository-keys.js';
import { RepositoryStorage } from './repository-storage.js';

export const REPOSITORY_CONFIG_KEY = 'ferry-repository.json';
const FORMAT = 'ferry-repository';
const FORMAT_VERSION = 1;
const DAY_MS = 86_400_000;

/** `ferry-repository.json` (`docs/repository-format.md`, "Repository config"). */
export interface RepositoryConfig {
  format: 'ferry-repository';
  version: 1;
  id: string;
  createdAt: string;
  /** Present when the repository is encrypted (chosen at creation). */
  encryption?: { algorithm: 'AES-256-GCM'; blockIds: 'HMAC-SHA256'; kdf: 'scrypt'; keyCheck: string };
  /** Present when restore points are immutable for a number of days (chosen at creation). */
  immutability?: { days: number };
}

/** `Repository.protection()`: what a session report says about the repository's protection. */
export interface RepositoryProtection {
  encrypted: boolean;
  /** Restore points cannot be deleted for this many days. */
  immutabilityDays?: number;
  /** What the storage itself enforces (`RepositoryBackend.protect`), with the reason when not all. */
  storage?: StorageProtection;
}

/** Where an encrypted repository's passphrase comes from; read only when the repository is encrypted. */
export interface PassphraseSource {
  /** For errors: "job.yaml repository.encryption.passphraseFile", "--passphrase-file", ... */
  describe: string;
  read(): Promise<string | undefined>;
}

export interface RepositoryOpenOptions {
  create: boolean;
  writeMeter?: WriteMeter;
  passphrase?: PassphraseSource;
  /**
   * What a new repository is created with. For an existing one, a setting given here that differs
   * from its config is REPO_SETTINGS_MISMATCH (a job that asks for encryption or immutability must
   * never silently write to a repository without it).
   */
  settings?: { encrypted?: boolean; immutabilityDays?: number };
  /** scrypt cost of new key objects (default `DEFAULT_SCRYPT`; tests lower it). */
  scrypt?: ScryptParams;
  /**
   * Open an encrypted repository without its passphrase: only plaintext objects (config, locks) can
   * be used; anything sealed is REPO_PASSPHRASE_REQUIRED. For `ferry unlock`.
   */
  keyless?: boolean;
}

export interface RestorePointDisk {
  name: string;
  sizeBytes: number;
  blockSize: number;
  /** Key of the disk's block map. */
  map: string;
  /** SHA-256 (hex) of the encoded block map. */
  mapSha256: string;
  blocks: number;
  zeroBlocks: number;
  transport: string;
  mode: 'full' | 'incremental';
  /** What the source host started for the next incremental run (opaque; `SourceDisk.changeTracking`). */
  changeTracking?: ChangeTracking;
}

/** A restore point's manifest: `points/<vm>/<id>.json`. Its presence is the commit. */
export interface RestorePoint {
  format: 'ferry-restore-point';
  version: 1;
  id: string;
  job: string;
  vm: string;
  session: string;
  createdAt: string;
  disks: RestorePointDisk[];
}

/**
 * The repository format on top of a backend: content-addressed blocks, block maps and restore points
 * (see `docs/repository-format.md`). Dedup is repository-wide: a block is stored once under its
 * SHA-256 whatever disk, VM or job it came from.
 */
export class Repository {
  /** The repository's blocks: index, dedup, packing, reads. */
  readonly blocks: BlockStore;
  /**
   * The backend as the core uses it: metadata sealed and opened when the repository is encrypted,
   * committed objects protected when it is immutable (`RepositoryStorage`).
   */
  readonly backend: RepositoryStorage;

  private constructor(
    readonly storage: RepositoryBackend,
    readonly config: RepositoryConfig,
    readonly cipher: RepositoryCipher | undefined,
    meter?: WriteMeter,
    /** The key object the passphrase opened (encrypted repositories). */
    readonly keyObject?: string,
  ) {
    this.backend = new RepositoryStorage(storage, cipher, config.immutability?.days, Boolean(config.encryption));
    this.blocks = new BlockStore(this.backend, meter, cipher);
  }

  get id(): string {
    return this.config.id;
  }

  /** The block-id key of an encrypted repository: the block codec must hash with it. */
  get idKey(): Buffer | undefined {
    return this.cipher?.idKey;
  }

  /** Opens the repository; creates it when `create` is set and the location holds no config yet. */
  static async open(backend: RepositoryBackend, opts: RepositoryOpenOptions): Promise<Repository> {
    let raw: Uint8Array | undefined;
    try {
      raw = await backend.get(REPOSITORY_CONFIG_KEY);
    } catch (err) {
      if (!isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) throw err;
    }
    if (!raw) {
      if (!opts.create) {
        throw new FerryError('REPO_NOT_A_REPOSITORY', `no Ferry repository at ${backend.location} (no ${REPOSITORY_CONFIG_KEY})`, {
          object: REPOSITORY_CONFIG_KEY,
        });
      }
      const strays = [];
      for await (const k of backend.list('')) {
        if (k.startsWith(KEYS_PREFIX)) continue; // a creation killed between its key object and its config
        strays.push(k);
        if (strays.length > 3) break;
      }
      if (strays.length) {
        throw new FerryError(
          'REPO_NOT_A_REPOSITORY',
          `${backend.location} is not empty and is not a Ferry repository (found ${strays.slice(0, 3).join(', ')}); ` +
            'point the job at an empty folder or an existing repository',
          {},
        );
      }
      return Repository.create(backend, opts);
    }
    const config = parseJson(raw, REPOSITORY_CONFIG_KEY) as RepositoryConfig;
    if (config.format !== FORMAT) {
      throw new FerryError('REPO_NOT_A_REPOSITORY', `${REPOSITORY_CONFIG_KEY} is not a Ferry repository config`, {
        object: REPOSITORY_CONFIG_KEY,
      });
    }
    if (config.version !== FORMAT_VERSION) {
      throw new FerryError(
        'REPO_FORMAT_UNSUPPORTED',
        `repository format version ${config.version}; this Ferry reads version ${FORMAT_VERSION}`,
        { object: REPOSITORY_CONFIG_KEY },
      );
    }
    checkSettings(config, opts, backend.location);
    if (!config.encryption || opts.keyless) return new Repository(backend, config, undefined, opts.writeMeter);
    const passphrase = await readPassphrase(opts.passphrase, backend.location);
    const { cipher, keyObject } = await openKeys(backend, config.id, config.encryption.keyCheck, passphrase);
    return new Repository(backend, config, cipher, opts.writeMeter, keyObject);
  }

  /**
   * A new repository: the key object first (encrypted), then the config, whose put is the creation.
   * A crash before the config leaves a key object in an otherwise empty folder, which the next
   * creation would refuse as not empty; so a stray `keys/` without a config is allowed.
   */
  private static async create(backend: RepositoryBackend, opts: RepositoryOpenOptions): Promise<Repository> {
    const days = opts.settings?.immutabilityDays;
    const config: RepositoryConfig = {
      format: FORMAT,
      version: FORMAT_VERSION,
      id: randomUUID(),
      createdAt: new Date().toISOString(),
      ...(days !== undefined && { immutability: { days } }),
    };
    let cipher: RepositoryCipher | undefined;
    let keyObject: string | undefined;
    if (opts.settings?.encrypted) {
      const passphrase = await readPassphrase(opts.passphrase, backend.location);
      const master = newMasterKeys();
      keyObject = await writeKeyObject(backend, config.id, master, passphrase, opts.scrypt ?? DEFAULT_SCRYPT);
      cipher = new RepositoryCipher(master);
      config.encryption = { algorithm: 'AES-256-GCM', blockIds: 'HMAC-SHA256', kdf: 'scrypt', keyCheck: cipher.keyCheck(config.id) };
    }
    await backend.put(REPOSITORY_CONFIG_KEY, Buffer.from(JSON.stringify(config, null, 2) + '\n'));
    const repo = new Repository(backend, config, cipher, opts.writeMeter, keyObject);
    if (days !== undefined) await repo.backend.protectObjects([REPOSITORY_CONFIG_KEY]);
    return repo;
  }

  /**
   * Wraps the master keys with a new passphrase (no data is rewritten): a new key object, then the
   * others are deleted. The caller holds a `key` lock. Returns the key objects written and removed.
   */
  async changePassphrase(newPassphrase: string, scrypt: ScryptParams = DEFAULT_SCRYPT): Promise<{ written: string; removed: string[] }> {
    if (!this.cipher) {
      throw new FerryError('REPO_SETTINGS_MISMATCH', `the repository at ${this.storage.location} is not encrypted, so it has no passphrase to change`, {
        object: REPOSITORY_CONFIG_KEY,
      });
    }
    checkPassphrase(newPassphrase, 'the new passphrase', this.storage.location);
    return rewrapKeys(this.storage, this.id, this.cipher.keys, newPassphrase, scrypt);
  }

  /**
   * What protects this repository, for reports: encryption, the immutability period, and what the
   * storage could do (known once something was protected; absent without immutability).
   */
  protection(): RepositoryProtection {
    const days = this.config.immutability?.days;
    return {
      encrypted: Boolean(this.config.encryption),
      ...(days !== undefined && { immutabilityDays: days }),
      ...(days !== undefined && this.backend.protection && { storage: this.backend.protection }),
    };
  }

  /** When a restore point stops being immutable; undefined when it is not (any more) at `now`. */
  immutableUntil(point: Pick<RestorePoint, 'createdAt'>, now = Date.now()): Date | undefined {
    const days = this.config.immutability?.days;
    if (days === undefined) return undefined;
    const created = Date.parse(point.createdAt);
    // A manifest without a readable time never becomes deletable by this rule's arithmetic.
    if (Number.isNaN(created)) return new Date(8.64e15);
    const until = new Date(created + days * DAY_MS);
    return until.getTime() > now ? until : undefined;
  }

  /** A new, sortable restore point id: `20261125T194405Z-3fa1c2`. */
  static newPointId(now = new Date()): string {
    const ts = now.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
    return `${ts}-${randomBytes(3).toString('hex')}`;
  }

  static pointKey(vm: string, id: string): string {
    return `points/${encodeName(vm)}/${id}.json`;
  }

  static mapKey(vm: string, id: string, diskIndex: number): string {
    return `points/${encodeName(vm)}/${id}/disk-${diskIndex}.map`;
  }

  /**
   * Commits a restore point: the packs still being filled, then block maps, then the manifest, each
   * atomic and durable. Until the manifest exists the point is invisible; a crash before it leaves
   * only unreferenced packs and maps.
   */
  async commitPoint(point: Omit<RestorePoint, 'format' | 'version'>, maps: BlockMap[]): Promise<RestorePoint> {
    await this.blocks.flush();
    const disks: RestorePointDisk[] = [];
    for (let i = 0; i < point.disks.length; i++) {
      const key = Repository.mapKey(point.vm, point.id, i);
      const bytes = maps[i].encode();
      await this.backend.put(key, bytes);
      disks.push({ ...point.disks[i], map: key, mapSha256: sha256(bytes).toString('hex') });
    }
    const full: RestorePoint = { format: 'ferry-restore-point', version: 1, ...point, disks };
    await this.backend.put(Repository.pointKey(point.vm, point.id), Buffer.from(JSON.stringify(full, null, 2) + '\n'));
    return full;
  }

  /** Committed restore points, oldest first; `vm` limits them to one VM. */
  async listPoints(vm?: string): Promise<RestorePoint[]> {
    const keys = await this.listPointKeys(vm);
    return sortPoints(await Promise.all(keys.map((k) => this.readPoint(k))));
  }

  /** Keys of the committed restore points' manifests (`points/<vm>/<id>.json`). */
  async listPointKeys(vm?: string): Promise<string[]> {
    const prefix = vm === undefined ? 'points/' : `points/${encodeName(vm)}/`;
    const keys: string[] = [];
    for await (const k of this.backend.list(prefix)) if (MANIFEST_KEY.test(k)) keys.push(k);
    return keys;
  }

  /** One manifest, checked enough that its disks can be walked; REPO_CORRUPT_OBJECT otherwise. */
  async readPoint(key: string): Promise<RestorePoint> {
    const p = parseJson(await this.backend.get(key), key) as RestorePoint;
    if (p?.format !== 'ferry-restore-point' || typeof p.id !== 'string' || typeof p.vm !== 'string' || !Array.isArray(p.disks)) {
      throw new FerryError('REPO_CORRUPT_OBJECT', 'is not a restore point manifest', { object: key });
    }
    return p;
  }

  /**
   * Deletes a restore point: the manifest first, so the point disappears in one step (the commit in
   * reverse), then its block maps. A crash in between leaves maps of an uncommitted point, which
   * garbage collection removes. Its blocks stay until garbage collection finds nothing needs them.
   */
  async deletePoint(point: RestorePoint): Promise<void> {
    const until = this.immutableUntil(point);
    if (until) {
      throw new FerryError(
        'REPO_IMMUTABLE',
        `restore point ${point.id} of vm ${point.vm} is immutable until ${until.toISOString()} (immutability: ${this.config.immutability!.days} days)`,
        { vm: point.vm, object: Repository.pointKey(point.vm, point.id) },
      );
    }
    await this.backend.delete(Repository.pointKey(point.vm, point.id));
    // Only keys under the point's own folder: a damaged manifest must not delete another point's map.
    const own = `points/${encodeName(point.vm)}/${point.id}/`;
    for (const d of point.disks) if (typeof d.map === 'string' && d.map.startsWith(own)) await this.backend.delete(d.map);
  }

  /** One VM's restore point by id, or its newest with `latest`. */
  async getPoint(vm: string, id: string): Promise<RestorePoint> {
    const points = await this.listPoints(vm);
    const p = id === 'latest' ? points.at(-1) : points.find((x) => x.id === id);
    if (!p) {
      const ids = points.map((x) => x.id);
      throw new FerryError(
        'REPO_POINT_NOT_FOUND',
        `no restore point "${id}" for vm ${vm}; ${ids.length ? `available: ${ids.join(', ')}` : 'the VM has no restore points'}`,
        { vm },
      );
    }
    return p;
  }

  /** A disk of a restore point (`latest` allowed), or RESTORE_NOT_FOUND listing the point's disks. */
  async getPointDisk(vm: string, id: string, diskName: string): Promise<{ point: RestorePoint; disk: RestorePointDisk }> {
    const point = await this.getPoint(vm, id);
    const disk = point.disks.find((d) => d.name === diskName);
    if (!disk) {
      throw new FerryError(
        'RESTORE_NOT_FOUND',
        `restore point ${point.id} of vm ${vm} has no disk "${diskName}"; its disks: ${point.disks.map((d) => d.name).join(', ')}`,
        { vm, disk: diskName },
      );
    }
    return { point, disk };
  }

  async readMap(disk: RestorePointDisk): Promise<BlockMap> {
    const bytes = await this.backend.get(disk.map);
    if (sha256(bytes).toString('hex') !== disk.mapSha256) {
      throw new FerryError('REPO_CORRUPT_OBJECT', 'block map does not match the SHA-256 in its restore point', { object: disk.map });
    }
    return BlockMap.decode(bytes, disk.map);
  }
}

const MANIFEST_KEY = /^points\/[^/]+\/[^/]+\.json$/;

/** Oldest first (by creation time, then id). */
export function sortPoints(points: RestorePoint[]): RestorePoint[] {
  return points.sort((a, b) => (a.createdAt === b.createdAt ? a.id.localeCompare(b.id) : a.createdAt.localeCompare(b.createdAt)));
}

/** VM names become key segments; anything outside `[A-Za-z0-9._-]` becomes `~hh`. */
export function encodeName(name: string): string {
  return name.replace(/[^A-Za-z0-9._-]/g, (c) => '~' + c.charCodeAt(0).toString(16).padStart(2, '0'));
}

/** Settings the caller asked for must match an existing repository's config. */
function checkSettings(config: RepositoryConfig, opts: RepositoryOpenOptions, location: string): void {
  const want = opts.settings;
  if (want?.encrypted && !config.encryption) {
    throw new FerryError(
      'REPO_SETTINGS_MISMATCH',
      `the job asks for encryption but the repository at ${location} was created without it (encryption is chosen when a repository is created)`,
      { object: REPOSITORY_CONFIG_KEY },
    );
  }
  const days = want?.immutabilityDays;
  if (days !== undefined && config.immutability?.days !== days) {
    const has = config.immutability ? `${config.immutability.days} days` : 'no immutability';
    throw new FerryError(
      'REPO_SETTINGS_MISMATCH',
      `the job asks for immutability of ${days} days but the repository at ${location} was created with ${has} (chosen when a repository is created)`,
      { object: REPOSITORY_CONFIG_KEY },
    );
  }
}

async function readPassphrase(source: PassphraseSource | undefined, location: string): Promise<string> {
  const p = await source?.read();
  if (p === undefined) {
    throw new FerryError(
      'REPO_PASSPHRASE_REQUIRED',
      `the repository at ${location} is encrypted and no passphrase was given` +
        `${source ? ` (${source.describe} is not set)` : ''}: set repository.encryption.passphraseFile or passphraseEnv in the job, ` +
        'or --passphrase-file / FERRY_PASSPHRASE for a bare repository',
      { object: REPOSITORY_CONFIG_KEY },
    );
  }
  checkPassphrase(p, source!.describe, location);
  return p;
}

function checkPassphrase(p: string, what: string, location: string): void {
  if (p.length === 0) throw new FerryError('REPO_PASSPHRASE_REQUIRED', `${what} is empty (repository ${location})`, { object: REPOSITORY_CONFIG_KEY });
}

function parseJson(raw: Uint8Array, object: string): unknown {
  try {
    return JSON.parse(Buffer.from(raw).toString('utf8'));
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `not valid JSON: ${(err as Error).message}`, { object }, { cause: err });
  }
}
