import type { ObjectWriter, RepositoryBackend, StorageProtection } from '../contracts/repository-backend.js';
import { FerryError } from '../errors.js';
import { pointIdTime } from './point-id.js';
import type { RepositoryCipher } from './repository-cipher.js';

/**
 * The backend as the rest of the core sees it: a wrapper (restic style: cross-cutting behaviour
 * wraps a backend instead of living in it) that
 *
 * - seals every metadata object on put and opens it on get when the repository is encrypted, bound
 *   to its name, so callers read and write plaintext (see `objectName` for what stays plaintext);
 * - with immutability, asks the storage to protect committed objects (config, packs, index objects,
 *   block maps, manifests) right after their put, lifts that before the core deletes one, and
 *   refuses to delete the manifest of a point whose id (its session's start) is younger than the
 *   period;
 * - refuses to replace a write-once object (`isWriteOnce`): those go through `putIfAbsent`. The rule on points is enforced first in
 *   `Repository.deletePoint` and retention; this is the last guard below them.
 *
 * Pack files pass through: their block records are sealed one by one by the block store (range
 * reads), and their trailer by `sealPack`.
 */
export class RepositoryStorage implements RepositoryBackend {
  /** What the storage said the first time it was asked to protect something (reported once). */
  protection?: StorageProtection;
  private warned = false;

  /**
   * `sealed` without `cipher`: an encrypted repository opened without its key (`ferry unlock` needs
   * only the plaintext lock objects); any sealed object is then REPO_PASSPHRASE_REQUIRED.
   */
  constructor(
    readonly raw: RepositoryBackend,
    readonly cipher: RepositoryCipher | undefined,
    readonly immutabilityDays: number | undefined,
    private readonly sealed = Boolean(cipher),
    private readonly warn: (line: string) => void = (l) => process.stderr.write(`ferry: ${l}\n`),
    /**
     * Repository format. 2: the objects that change by design (locks, the damaged-blocks list, gc's
     * state) live under `mutable/` (`mutable/locks/...`), which the rest of the core never sees:
     * it keeps using `locks/`, `health/` and `gc/` keys, mapped here.
     */
    readonly format: 1 | 2 = 1,
  ) {
    if (typeof (raw as Partial<RepositoryBackend>).putIfAbsent !== 'function') {
      throw new FerryError(
        'PLUGIN_CONTRACT',
        `the repository backend at ${raw.location} has no putIfAbsent (create-only put, core API 1.1); ` +
          'without it two writers could replace each other\'s objects, so Ferry will not write to it',
        {},
      );
    }
  }

  get location(): string {
    return this.raw.location;
  }

  /** The key the backend stores `key` under (format 2: mutable objects under `mutable/`). */
  physical(key: string): string {
    return this.format === 2 && isMutable(key) ? MUTABLE_PREFIX + key : key;
  }

  async get(key: string): Promise<Uint8Array> {
    const name = this.nameOf(key);
    const data = await this.raw.get(this.physical(key));
    return name ? this.cipher!.openObject(name, data, key) : data;
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    if (this.nameOf(key)) throw new FerryError('INTERNAL', 'range read of a sealed object', { object: key });
    if (this.raw.getRange) return this.raw.getRange(key, offset, length);
    const all = await this.raw.get(key);
    return all.subarray(offset, offset + length);
  }

  /**
   * Replaces a mutable object (locks, health record, gc state) or rewrites an index object from its
   * own pack. A write-once object (`isWriteOnce`) is only ever created: one that exists already is
   * REPO_IMMUTABLE in an immutable repository and REPO_OBJECT_EXISTS otherwise.
   */
  /** `getRange` into `into`: without new memory when the backend reads into buffers, else copied. */
  async getRangeInto(key: string, offset: number, into: Uint8Array): Promise<void> {
    if (this.nameOf(key)) throw new FerryError('INTERNAL', 'range read of a sealed object', { object: key });
    if (this.raw.getRangeInto) return this.raw.getRangeInto(key, offset, into);
    const data = await this.getRange(key, offset, into.length);
    if (data.length !== into.length) throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + into.length} bytes`, { object: key });
    into.set(data);
  }

  /** The backend's local file for a plaintext object (pack files), where it has one. */
  localFile(key: string): string | undefined {
    if (this.nameOf(key) || !this.raw.localFile) return undefined;
    return this.raw.localFile(this.physical(key));
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    if (isWriteOnce(key)) {
      if (await this.putIfAbsent(key, data)) return;
      if (this.immutabilityDays !== undefined) {
        throw new FerryError('REPO_IMMUTABLE', 'the repository is immutable: a committed object is never replaced', { object: key });
      }
      throw new FerryError('REPO_OBJECT_EXISTS', `${key} exists already in ${this.raw.location}; a committed object is never replaced`, { object: key });
    }
    const name = this.nameOf(key);
    const protect = this.protects && isProtected(key);
    if (protect && (await this.raw.has(key))) await this.raw.unprotect?.([key]);
    await this.raw.put(this.physical(key), name ? this.cipher!.sealObject(name, data) : data);
    if (protect) await this.protectObjects([key]);
  }

  /** Create-only put (sealed and protected like `put`); `false` when the key exists already. */
  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    const name = this.nameOf(key);
    const stored = name ? this.cipher!.sealObject(name, data) : data;
    const created = await this.raw.putIfAbsent(this.physical(key), stored);
    if (created && this.protects && isProtected(key)) await this.protectObjects([key]);
    if (created) await this.onIndexWritten?.(key, stored);
    return created;
  }

  /**
   * Create-only put of an object already in its stored form (sealed by the caller): format 2 index
   * objects, whose name is the hash of the sealed bytes. Protected like `putIfAbsent`.
   */
  async putStoredIfAbsent(key: string, stored: Uint8Array): Promise<boolean> {
    const created = await this.raw.putIfAbsent(key, stored);
    if (created && this.protects && isProtected(key)) await this.protectObjects([key]);
    if (created) await this.onIndexWritten?.(key, stored);
    return created;
  }

  /** Whether the backend writes objects as they are produced (`beginObject`). */
  get streamsObjects(): boolean {
    return typeof this.raw.beginObject === 'function';
  }

  /**
   * An object written as it is produced (packs: stored as written, never sealed whole), committed
   * create-only and protected like `putIfAbsent`. Only for keys that are neither sealed objects nor
   * index objects (the index cache needs those whole).
   */
  async beginObject(): Promise<ObjectWriter> {
    if (!this.raw.beginObject) throw new FerryError('INTERNAL', `the backend at ${this.raw.location} cannot write objects as they are produced`);
    const w = await this.raw.beginObject();
    return {
      write: (data, offset) => w.write(data, offset),
      abort: () => w.abort(),
      commitIfAbsent: async (key) => {
        if (this.nameOf(key) || this.physical(key) !== key || key.startsWith('index/') || key.startsWith('indexes/')) {
          await w.abort();
          throw new FerryError('INTERNAL', `${key} cannot be written as it is produced`, { object: key });
        }
        const created = await w.commitIfAbsent(key);
        if (created && this.protects && isProtected(key)) await this.protectObjects([key]);
        return created;
      },
    };
  }

  /** Told of every index object this process creates, as stored (the local index cache keeps it). */
  onIndexWritten?: (key: string, stored: Uint8Array) => Promise<void> | void;

  /** An object as the backend stores it (sealed in an encrypted repository): for the index cache. */
  getStored(key: string): Promise<Uint8Array> {
    return this.raw.get(this.physical(key));
  }

  /** Opens an object read by `getStored` (or from the cache), as `get` would. */
  openStored(key: string, stored: Uint8Array): Uint8Array {
    const name = this.nameOf(key);
    return name ? this.cipher!.openObject(name, stored, key) : stored;
  }

  /**
   * Create-only put of an object that must not exist yet (a manifest, a block map, a key object):
   * REPO_OBJECT_EXISTS when it does, naming the key and `what`.
   */
  async putNew(key: string, data: Uint8Array, what: string): Promise<void> {
    if (!(await this.putIfAbsent(key, data))) {
      throw new FerryError('REPO_OBJECT_EXISTS', `${what} ${key} exists already in ${this.raw.location}; a committed object is never replaced`, {
        object: key,
      });
    }
  }

  has(key: string): Promise<boolean> {
    return this.raw.has(this.physical(key));
  }

  list(prefix: string): AsyncIterable<string> {
    if (this.format !== 2 || !isMutable(prefix)) return this.raw.list(prefix);
    return stripMutable(this.raw.list(MUTABLE_PREFIX + prefix));
  }

  async delete(key: string): Promise<void> {
    if (this.immutabilityDays !== undefined && isProtected(key)) {
      const until = manifestImmutableUntil(key, this.immutabilityDays, this.format);
      if (until && until.getTime() > Date.now()) {
        throw new FerryError('REPO_IMMUTABLE', `restore point is immutable until ${until.toISOString()}`, { object: key });
      }
      // Format 2 never lifts anything: the storage refuses a delete before the key's date.
      if (this.format === 1) await this.raw.unprotect?.([key]);
    }
    await this.raw.delete(this.physical(key));
  }

  close(): Promise<void> {
    return this.raw.close?.() ?? Promise.resolve();
  }

  removeStaleTemporaries(olderThanMs: number): Promise<number> {
    return this.raw.removeStaleTemporaries?.(olderThanMs) ?? Promise.resolve(0);
  }

  /** The name a sealed object is bound to; undefined for plaintext objects or repositories. */
  private nameOf(key: string): string | undefined {
    if (!this.sealed) return undefined;
    const name = objectName(key);
    if (name && !this.cipher) {
      throw new FerryError('REPO_PASSPHRASE_REQUIRED', `the repository at ${this.raw.location} is encrypted and was opened without its passphrase`, { object: key });
    }
    return name;
  }

  /** Format 1 immutability: `protect` after each put, `unprotect` before an allowed delete. */
  private get protects(): boolean {
    return this.immutabilityDays !== undefined && this.format === 1;
  }

  /**
   * Format 2 immutability: asks the storage to keep `keys` until `until` (`RepositoryBackend.retain`,
   * never shortened); says once when the storage cannot enforce it.
   */
  async retainObjects(keys: string[], until: Date): Promise<void> {
    if (keys.length === 0) return;
    if (!this.raw.retain) {
      this.protection ??= { readOnly: false, immutable: false, note: `the ${this.raw.location} backend offers no retain-until dates` };
    } else {
      const got = await this.raw.retain(keys.map((k) => this.physical(k)), until);
      if (!this.protection || (this.protection.immutable && !got.immutable)) this.protection = got;
    }
    this.warnOnce();
  }

  private warnOnce(): void {
    if (this.protection?.immutable || this.warned) return;
    this.warned = true;
    this.warn(
      `immutability at ${this.raw.location}: ${this.protection?.note ?? 'the storage cannot make objects immutable'}; ` +
        'Ferry itself still refuses to delete or replace restore points inside the period',
    );
  }

  /** Protects committed objects (immutability); says once when the storage cannot do all of it. */
  async protectObjects(keys: string[]): Promise<void> {
    if (!this.raw.protect) {
      this.protection ??= { readOnly: false, immutable: false, note: `the ${this.raw.location} backend offers no storage-level protection` };
    } else {
      const got = await this.raw.protect(keys);
      if (!this.protection || (this.protection.immutable && !got.immutable)) this.protection = got;
    }
    if (!this.protection.immutable && !this.warned) {
      this.warned = true;
      this.warn(
        `immutability at ${this.raw.location}: ${this.protection.note ?? 'the storage cannot make objects immutable'}; ` +
          'Ferry itself still refuses to delete or replace restore points inside the period',
      );
    }
  }
}

/** Format 2: where objects that change by design live (`docs/repository-format.md`, "Layout"). */
export const MUTABLE_PREFIX = 'mutable/';

/** Keys the core writes for objects that change by design: locks, the health record, gc's state. */
function isMutable(key: string): boolean {
  return key.startsWith('locks/') || key.startsWith('health/') || key.startsWith('gc/');
}

async function* stripMutable(keys: AsyncIterable<string>): AsyncIterable<string> {
  for await (const k of keys) yield k.slice(MUTABLE_PREFIX.length);
}

/**
 * What a sealed object is bound to (its associated data), or undefined for objects that stay
 * plaintext: the config (it says whether the repository is encrypted), key objects (they carry their
 * own wrapping), lock objects (`ferry unlock` must show holders without a passphrase; they hold no
 * data and no block ids) and pack files (sealed record by record). Index objects are bound to their
 * pack id, not their key, so garbage collection can move one to `gc/condemned/` and back.
 */
export function objectName(key: string): string | undefined {
  if (key === 'ferry-repository.json' || key.startsWith('keys/') || key.startsWith('locks/') || key.startsWith('packs/')) return undefined;
  if (/^indexes\/[0-9a-f]{64}$/.test(key)) return 'index'; // format 2: named by the hash of the sealed bytes
  const index = /^(?:index|gc\/condemned)\/[0-9a-f]{2}\/([0-9a-f]{64})$/.exec(key);
  if (index) return `pack-index:${index[1]}`;
  return key;
}

/**
 * Objects written once and never replaced: the config, key objects, packs and block maps and
 * manifests. (Index objects are written once too, but `verify` and gc may rewrite one from its own
 * pack's trailer with the same entries.)
 */
export function isWriteOnce(key: string): boolean {
  return key === 'ferry-repository.json' || key.startsWith('keys/') || key.startsWith('packs/') || key.startsWith('indexes/') || key.startsWith('points/') || key.startsWith('retention/');
}

/** Objects immutability protects: everything a committed restore point needs, and the config. */
function isProtected(key: string): boolean {
  return key === 'ferry-repository.json' || key.startsWith('packs/') || key.startsWith('index/') || key.startsWith('indexes/') || key.startsWith('points/');
}

/** For a manifest key `points/<vm>/<id>.json`: the session start its id encodes plus the period. */
function manifestImmutableUntil(key: string, days: number, format: 1 | 2): Date | undefined {
  const m = /^points\/[^/]+\/([^/]+)\.json$/.exec(key);
  const t = m ? pointIdTime(m[1]) : undefined;
  if (t === undefined) return undefined;
  // Format 2: the point's retain-until date (`retention-dates.ts`), rounded up to a UTC midnight.
  return format === 2 ? new Date(Math.ceil((t + days * 86_400_000) / 86_400_000) * 86_400_000) : new Date(t + days * 86_400_000);
}
