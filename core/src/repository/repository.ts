import { randomUUID } from 'node:crypto';
import type { ChangeTracking, VmDefinition } from '../contracts/source-host.js';
import type { RepositoryBackend, StorageProtection } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import { BlockMap } from './block-map.js';
import { comparePointIds, newPointId, pointIdTime } from './point-id.js';
import { BlockStore, type WriteMeter } from './block-store.js';
import { RepositoryCipher } from './repository-cipher.js';
import { DEFAULT_SCRYPT, KEYS_PREFIX, newMasterKeys, openKeys, rewrapKeys, writeKeyObject, type ScryptParams } from './repository-keys.js';
import { RepositoryStorage } from './repository-storage.js';
import { IndexCache } from './index-cache.js';
import { pointRetainUntil, RetentionDates } from './retention-dates.js';

export const REPOSITORY_CONFIG_KEY = 'ferry-repository.json';
const FORMAT = 'ferry-repository';
/** Versions this Ferry opens; new repositories get `newRepositoryFormat()`. */
const FORMAT_VERSIONS: readonly number[] = [1, 2];
const DAY_MS = 86_400_000;

/** `ferry-repository.json` (`docs/repository-format.md`, "Repository config"). */
export interface RepositoryConfig {
  format: 'ferry-repository';
  version: 1 | 2;
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
  settings?: { encrypted?: boolean; immutabilityDays?: number; format?: 1 | 2 };
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
  /**
   * Blocks a filter other than the built-in `zero` stored as zero blocks, per filter name: where a
   * restore of this point has zeros the source may have had data. Absent when no filter dropped any.
   */
  filtered?: Record<string, number>;
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
  /** Format 2 with immutability: the date the storage keeps the point's objects until. */
  retainUntil?: string;
  disks: RestorePointDisk[];
  /** The VM's definition as the source host gave it (`VmSnapshot.definition`), when it gave one. */
  definition?: VmDefinition;
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
    this.backend = new RepositoryStorage(storage, cipher, config.immutability?.days, Boolean(config.encryption), undefined, config.version);
    this.blocks = new BlockStore(this.backend, meter, cipher, IndexCache.forRepository(config.id), config.version);
    if (config.version === 2 && config.immutability) this.retention = new RetentionDates(this.backend);
  }

  /** Format 2 with immutability: the retain-until dates the core knows and extends. */
  readonly retention?: RetentionDates;

  get id(): string {
    return this.config.id;
  }

  /** The repository format version (`ferry-repository.json`). */
  get format(): 1 | 2 {
    return this.config.version;
  }

  /** The block-id key of an encrypted repository: the block codec must hash with it. */
  get idKey(): Buffer | undefined {
    return this.cipher?.idKey;
  }

  /**
   * Opens the repository; creates it when `create` is set and the location holds no config yet.
   * Creation is race-free: the config is written create-only, so of several processes creating one
   * repository at once exactly one wins and the others open what it made.
   */
  static async open(backend: RepositoryBackend, opts: RepositoryOpenOptions): Promise<Repository> {
    for (let attempt = 0; ; attempt++) {
      const raw = await readConfig(backend);
      if (raw) return Repository.openExisting(backend, raw, opts);
      if (!opts.create) {
        throw new FerryError('REPO_NOT_A_REPOSITORY', `no Ferry repository at ${backend.location} (no ${REPOSITORY_CONFIG_KEY})`, {
          object: REPOSITORY_CONFIG_KEY,
        });
      }
      const strays = await strayObjects(backend);
      if (strays.length) {
        // Another creator may have finished between the read above and this listing.
        if (attempt < 2 && (await backend.has(REPOSITORY_CONFIG_KEY))) continue;
        throw new FerryError(
          'REPO_NOT_A_REPOSITORY',
          `${backend.location} is not empty and is not a Ferry repository (found ${strays.slice(0, 3).join(', ')}); ` +
            'point the job at an empty folder or an existing repository',
          {},
        );
      }
      const created = await Repository.create(backend, opts);
      if (created) return created;
      if (attempt >= 2) {
        throw new FerryError('REPO_IO', `the repository at ${backend.location} was being created by another process and could not be opened`, {
          object: REPOSITORY_CONFIG_KEY,
        });
      }
    }
  }

  private static async openExisting(backend: RepositoryBackend, raw: Uint8Array, opts: RepositoryOpenOptions): Promise<Repository> {
    const config = parseJson(raw, REPOSITORY_CONFIG_KEY) as RepositoryConfig;
    if (config.format !== FORMAT) {
      throw new FerryError('REPO_NOT_A_REPOSITORY', `${REPOSITORY_CONFIG_KEY} is not a Ferry repository config`, {
        object: REPOSITORY_CONFIG_KEY,
      });
    }
    if (!FORMAT_VERSIONS.includes(config.version)) {
      throw new FerryError(
        'REPO_FORMAT_UNSUPPORTED',
        `repository format version ${config.version}; this Ferry reads versions ${FORMAT_VERSIONS.join(' and ')}`,
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
   * A new repository: the key object first (encrypted), then the config, whose create-only put is
   * the creation. Undefined when another process created the config first: this one's key object
   * is removed again and the caller opens the winner's repository. A crash before the config
   * leaves a key object in an otherwise empty folder, which a later creation accepts.
   */
  private static async create(backend: RepositoryBackend, opts: RepositoryOpenOptions): Promise<Repository | undefined> {
    const days = opts.settings?.immutabilityDays;
    const config: RepositoryConfig = {
      format: FORMAT,
      version: opts.settings?.format ?? newRepositoryFormat(),
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
    if (!(await backend.putIfAbsent(REPOSITORY_CONFIG_KEY, Buffer.from(JSON.stringify(config, null, 2) + '\n')))) {
      if (keyObject) await backend.delete(keyObject);
      return undefined;
    }
    const repo = new Repository(backend, config, cipher, opts.writeMeter, keyObject);
    if (days !== undefined && config.version === 1) await repo.backend.protectObjects([REPOSITORY_CONFIG_KEY]);
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

  /**
   * When a restore point stops being immutable; undefined when it is not (any more) at `now`. The
   * period runs from the session start its id encodes (not a field inside the manifest, which a
   * damaged or hostile manifest could set); an id without a readable time never becomes deletable
   * by this rule's arithmetic.
   */
  immutableUntil(point: Pick<RestorePoint, 'id'>, now = Date.now()): Date | undefined {
    const days = this.config.immutability?.days;
    if (days === undefined) return undefined;
    if (this.format === 2) {
      const until = pointRetainUntil(point.id, days);
      return until.getTime() > now ? until : undefined;
    }
    const created = pointIdTime(point.id);
    if (created === undefined) return new Date(8.64e15);
    const until = new Date(created + days * DAY_MS);
    return until.getTime() > now ? until : undefined;
  }

  /** A new restore point id, in creation order (`point-id.ts`): `20261125T194405123Z-3fa1c2`. */
  static newPointId(now = new Date()): string {
    return newPointId(now);
  }

  static pointKey(vm: string, id: string): string {
    return `points/${encodeName(vm)}/${id}.json`;
  }

  static mapKey(vm: string, id: string, diskIndex: number): string {
    return `points/${encodeName(vm)}/${id}/disk-${diskIndex}.map`;
  }

  /**
   * Commits a restore point: the packs still being filled, then block maps, then the manifest, each
   * atomic, durable and create-only (a point id and VM that exist already are REPO_OBJECT_EXISTS,
   * never a replacement). Until the manifest exists the point is invisible; a crash before it
   * leaves only unreferenced packs and maps.
   */
  async commitPoint(point: Omit<RestorePoint, 'format' | 'version'>, maps: BlockMap[]): Promise<RestorePoint> {
    await this.blocks.flush();
    // Format 2 immutability: every pack and index object the point needs is retained at least to
    // its date before its maps exist, so a committed point never depends on an object that ends sooner.
    const until = this.retention ? pointRetainUntil(point.id, this.config.immutability!.days) : undefined;
    if (until) await this.retention!.extendForPoint(this.blocks, maps, until);
    const disks: RestorePointDisk[] = [];
    for (let i = 0; i < point.disks.length; i++) {
      const key = Repository.mapKey(point.vm, point.id, i);
      const bytes = maps[i].encode();
      await this.backend.putNew(key, bytes, 'block map');
      if (until) await this.backend.retainObjects([key], until);
      disks.push({ ...point.disks[i], map: key, mapSha256: sha256(bytes).toString('hex') });
    }
    const full: RestorePoint = { format: 'ferry-restore-point', version: 1, ...point, ...(until && { retainUntil: until.toISOString() }), disks };
    const manifest = Repository.pointKey(point.vm, point.id);
    await this.backend.putNew(manifest, Buffer.from(JSON.stringify(full, null, 2) + '\n'), 'restore point manifest');
    if (until) await this.backend.retainObjects([manifest], until);
    return full;
  }

  /**
   * Committed restore points that can be read, oldest first (by id); `vm` limits them to one VM.
   * Damaged manifests are left out here: `listPointsChecked` reports them.
   */
  async listPoints(vm?: string): Promise<RestorePoint[]> {
    return (await this.listPointsChecked(vm)).points;
  }

  /**
   * Every committed restore point: those that read back (oldest first, by id) and those whose
   * manifest cannot be read, authenticated or does not match its key, with the reason. One damaged
   * manifest never hides the other points.
   */
  async listPointsChecked(vm?: string): Promise<{ points: RestorePoint[]; damaged: DamagedPoint[] }> {
    const keys = await this.listPointKeys(vm);
    const points: RestorePoint[] = [];
    const damaged: DamagedPoint[] = [];
    await Promise.all(
      keys.map(async (key) => {
        try {
          points.push(await this.readPoint(key));
        } catch (err) {
          if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return; // deleted since the listing
          // Only damage of the manifest itself; a missing passphrase or a failing backend stops the listing.
          if (!isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
          damaged.push({ ...parsePointKey(key), manifest: key, status: 'damaged', code: err.code, reason: err.message });
        }
      }),
    );
    damaged.sort((a, b) => comparePointIds(a.id, b.id));
    return { points: sortPoints(points), damaged };
  }

  /** Keys of the committed restore points' manifests (`points/<vm>/<id>.json`). */
  async listPointKeys(vm?: string): Promise<string[]> {
    const prefix = vm === undefined ? 'points/' : `points/${encodeName(vm)}/`;
    const keys: string[] = [];
    for await (const k of this.backend.list(prefix)) if (MANIFEST_KEY.test(k)) keys.push(k);
    return keys;
  }

  /**
   * One manifest, checked enough that its disks can be walked, and checked against its key: a
   * manifest stored under another point's or VM's name is damaged (REPO_CORRUPT_OBJECT).
   */
  async readPoint(key: string): Promise<RestorePoint> {
    const p = parseJson(await this.backend.get(key), key) as RestorePoint;
    if (p?.format !== 'ferry-restore-point' || typeof p.id !== 'string' || typeof p.vm !== 'string' || !Array.isArray(p.disks)) {
      throw new FerryError('REPO_CORRUPT_OBJECT', 'is not a restore point manifest', { object: key });
    }
    if (Repository.pointKey(p.vm, p.id) !== key) {
      throw new FerryError('REPO_CORRUPT_OBJECT', `the manifest names restore point ${p.id} of vm ${p.vm}, which belongs under ${Repository.pointKey(p.vm, p.id)}`, {
        object: key,
      });
    }
    return p;
  }

  /**
   * Deletes a restore point: the manifest first, so the point disappears in one step (the commit in
   * reverse), then its block maps. A crash in between leaves maps of an uncommitted point, which
   * garbage collection removes. Its blocks stay until garbage collection finds nothing needs them.
   * Without `disks` (a damaged manifest) every map in the point's folder goes. Returns the keys
   * deleted.
   */
  async deletePoint(point: Pick<RestorePoint, 'vm' | 'id'> & { disks?: { map: unknown }[] }): Promise<string[]> {
    const until = this.immutableUntil(point);
    if (until) {
      throw new FerryError(
        'REPO_IMMUTABLE',
        `restore point ${point.id} of vm ${point.vm} is immutable until ${until.toISOString()} (immutability: ${this.config.immutability!.days} days)`,
        { vm: point.vm, object: Repository.pointKey(point.vm, point.id) },
      );
    }
    const manifest = Repository.pointKey(point.vm, point.id);
    await this.backend.delete(manifest);
    // Only keys under the point's own folder: a damaged manifest must not delete another point's map.
    // A point whose manifest could not be read loses every map in its folder.
    const own = `points/${encodeName(point.vm)}/${point.id}/`;
    const maps: string[] = [];
    if (point.disks) {
      for (const d of point.disks) if (typeof d.map === 'string' && d.map.startsWith(own)) maps.push(d.map);
    } else {
      for await (const k of this.backend.list(own)) maps.push(k);
    }
    for (const k of maps) await this.backend.delete(k);
    return [manifest, ...maps];
  }

  /** One VM's restore point by id, or its newest with `latest`. */
  async getPoint(vm: string, id: string): Promise<RestorePoint> {
    const { points, damaged } = await this.listPointsChecked(vm);
    const p = id === 'latest' ? points.at(-1) : points.find((x) => x.id === id);
    const bad = damaged.find((x) => x.id === id);
    if (!p && bad) {
      throw new FerryError('REPO_CORRUPT_OBJECT', `restore point ${id} of vm ${vm} is damaged: ${bad.reason}`, { vm, object: bad.manifest });
    }
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

/**
 * The format of repositories created without an explicit `settings.format`: `FERRY_REPOSITORY_FORMAT`
 * (`1` or `2`) when set, else 2. Anything else is CLI_USAGE rather than a silent default.
 */
export function newRepositoryFormat(env: NodeJS.ProcessEnv = process.env): 1 | 2 {
  const v = env.FERRY_REPOSITORY_FORMAT;
  if (v === undefined || v === '') return 2;
  if (v === '1' || v === '2') return Number(v) as 1 | 2;
  throw new FerryError('CLI_USAGE', `FERRY_REPOSITORY_FORMAT is "${v}"; it must be 1 or 2 (the format of new repositories)`, {});
}

const MANIFEST_KEY = /^points\/[^/]+\/[^/]+\.json$/;

/** A committed restore point whose manifest cannot be used (`Repository.listPointsChecked`). */
export interface DamagedPoint {
  vm: string;
  id: string;
  manifest: string;
  status: 'damaged';
  code: string;
  reason: string;
}

/** Oldest first: by id (the session start it encodes, then creation order), never a manifest field. */
export function sortPoints<T extends { id: string }>(points: T[]): T[] {
  return points.sort((a, b) => comparePointIds(a.id, b.id));
}

/** VM name and point id of a manifest key `points/<vm>/<id>.json`. */
function parsePointKey(key: string): { vm: string; id: string } {
  const [, vm, file] = key.split('/');
  return { vm: decodeName(vm), id: file.slice(0, -'.json'.length) };
}

function decodeName(segment: string): string {
  return segment.replace(/~([0-9a-f]{2})/g, (_m, h: string) => String.fromCharCode(parseInt(h, 16)));
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

async function readConfig(backend: RepositoryBackend): Promise<Uint8Array | undefined> {
  try {
    return await backend.get(REPOSITORY_CONFIG_KEY);
  } catch (err) {
    if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return undefined;
    throw err;
  }
}

/**
 * Up to four keys at the location that are not key objects: a new repository needs an empty place
 * (a creation killed between its key object and its config leaves only `keys/`).
 */
async function strayObjects(backend: RepositoryBackend): Promise<string[]> {
  const strays: string[] = [];
  for await (const k of backend.list('')) {
    if (k.startsWith(KEYS_PREFIX)) continue;
    strays.push(k);
    if (strays.length > 3) break;
  }
  return strays;
}

function parseJson(raw: Uint8Array, object: string): unknown {
  try {
    return JSON.parse(Buffer.from(raw).toString('utf8'));
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `not valid JSON: ${(err as Error).message}`, { object }, { cause: err });
  }
}
