/**
 * Repository backend contract: the object storage under a Ferry repository (a filesystem folder, an
 * S3 bucket). The repository format (blocks, block maps, restore points; `docs/repository-format.md`)
 * is written by the core on top of this contract, so every backend stores the same format.
 *
 * Keys are `/`-separated relative names made of `[A-Za-z0-9._-]` segments.
 *
 * Invariants:
 * - `put` and `putIfAbsent` are atomic and durable: when they resolve the object is complete under
 *   its key and survives a crash; if the process dies during one, readers see the old state (no
 *   object, or the previous one), never a partial object.
 * - `putIfAbsent` is create-only: of any number of concurrent calls for one key, from any number of
 *   processes or hosts, exactly one creates the object and resolves `true`; every other resolves
 *   `false` and changes nothing. A key that exists already resolves `false`.
 * - Write-once: the core writes every object of the format with `putIfAbsent` (config, key objects,
 *   packs, index objects, block maps, manifests) and never replaces one with `put`. `put` replaces
 *   only the objects that are mutable by design: lock objects (`locks/`, heartbeats), the health
 *   record (`health/`), garbage collection's state (`gc/`), and an index object rewritten from its
 *   own pack's trailer (the same entries: a repair by `verify`, or gc putting a condemned pack back).
 * - `get` of a missing key throws FerryError `REPO_OBJECT_NOT_FOUND` naming the key; any other
 *   failure throws `REPO_IO` naming the key and the backend location.
 * - `list(prefix)` yields every key that starts with `prefix` and was put before the call started,
 *   and no key that was deleted before the call started (garbage collection relies on it: a session
 *   that lists `index/` after gc removed a pack's index object must not see it).
 * - `delete` of a missing key is not an error; when `delete` resolves, the object stays gone after a
 *   crash (a filesystem fsyncs the folder).
 *
 * Optional members and their defaults:
 * - `getRange` missing: the core calls `get` and slices.
 * - `getRangeInto` missing: the core calls `getRange` (a restore then reads each block into new
 *   memory instead of the block buffers it reuses). When offered it fills all of `into` (its length
 *   is the range's) and keeps no reference to it after resolving; a short object is an error.
 * - `localFile` missing: every range read goes through `getRangeInto`/`getRange`. When offered it
 *   names a plain local file holding exactly the object's bytes, which the core may open and read
 *   itself (a restore's worker threads read their blocks' ranges there); undefined for a key it
 *   does not hold that way.
 * - `close` missing: nothing to release.
 * - `removeStaleTemporaries` missing: the backend leaves nothing behind when a put is interrupted
 *   (S3 multipart uploads expire by bucket policy), so garbage collection has nothing to clean.
 * - `protect`/`unprotect` missing: the storage offers no protection of its own; immutability
 *   (`docs/repository-format.md`, "Immutability") is then enforced by the core's code alone.
 * - `retain`/`retainedUntil` missing (format 2 immutability, `docs/repository-format.md`,
 *   "Retain-until dates"): the storage keeps no dates; the core's rules alone hold.
 * - `beginObject` missing: the core assembles a pack in memory and stores it with `putIfAbsent`.
 */
export interface RepositoryBackend {
  /** Where the repository lives, for reports and errors (a path, `s3://bucket/prefix`). */
  readonly location: string;
  get(key: string): Promise<Uint8Array>;
  getRange?(key: string, offset: number, length: number): Promise<Uint8Array>;
  getRangeInto?(key: string, offset: number, into: Uint8Array): Promise<void>;
  localFile?(key: string): string | undefined;
  put(key: string, data: Uint8Array): Promise<void>;
  /**
   * Creates the object only when the key does not exist (filesystem: `link()` of the finished
   * temporary file; S3: `If-None-Match: *`). Resolves `true` when this call created it, `false` when
   * the key already existed (nothing was written). Required since core API 1.1.
   */
  putIfAbsent(key: string, data: Uint8Array): Promise<boolean>;
  has(key: string): Promise<boolean>;
  list(prefix: string): AsyncIterable<string>;
  delete(key: string): Promise<void>;
  close?(): Promise<void>;
  /**
   * Removes what interrupted puts left behind (a filesystem backend's temporary files) that is older
   * than `olderThanMs`; returns how many were removed. Never touches keys.
   */
  removeStaleTemporaries?(olderThanMs: number): Promise<number>;
  /**
   * Immutability: asks the storage to refuse changes to and deletion of these committed objects
   * (filesystem: read-only mode and the immutable attribute). Best effort: never throws for lack of
   * support or privileges; says what it could do. Idempotent.
   */
  protect?(keys: string[]): Promise<StorageProtection>;
  /** Lifts `protect` before the core deletes or replaces an object it is allowed to. Idempotent. */
  unprotect?(keys: string[]): Promise<void>;
  /**
   * Format 2 immutability: asks the storage to keep each of these existing objects unchanged and
   * undeleted until `until` (S3: Object Lock retention in compliance mode; filesystem: read-only
   * mode, the immutable attribute where it can be set, and the date recorded under `mutable/`).
   * Never shortens a date: a key retained later already keeps its date. There is no way to lift
   * a date: once a backend offers `retain`, its `delete` of a key before the key's date throws
   * `REPO_IMMUTABLE` naming the key and the date, and after it removes whatever protection it set.
   * Best effort like `protect`: says what the storage enforces; throws only for I/O failures.
   */
  retain?(keys: string[], until: Date): Promise<StorageProtection>;
  /** The retain-until date the storage holds for `key`; undefined when it has none. */
  retainedUntil?(key: string): Promise<Date | undefined>;
  /**
   * A create-only put whose bytes are written as they are produced, and whose key is known only at
   * the end (a pack: its id hashes its trailer). Nothing is visible under any key until `commitIfAbsent`
   * resolves `true`, with `putIfAbsent`'s guarantees (atomic, durable, create-only); an object
   * abandoned before that leaves at most what `removeStaleTemporaries` cleans up. The core calls it
   * for packs only.
   */
  beginObject?(): Promise<ObjectWriter>;
  /**
   * Object storage: requests sent since the backend was created, by kind, and what the backend found
   * that a session report should say (S3: `objectLock: auto` on a bucket without Object Lock).
   */
  requestStats?(): BackendRequestStats;
}

/** An object being written (`RepositoryBackend.beginObject`). */
export interface ObjectWriter {
  /**
   * Writes `data` at byte `offset` of the object. Writes may be in flight at once, at distinct
   * ranges; the object's bytes are what they wrote, with no gaps. The caller may reuse `data` once
   * this resolves.
   */
  write(data: Uint8Array, offset: number): Promise<void>;
  /**
   * After every write resolved: stores the object under `key` as `putIfAbsent` would (`true` when
   * this call created it, `false` when the key existed; nothing written stays behind either way).
   * Ends the writer.
   */
  commitIfAbsent(key: string): Promise<boolean>;
  /** Drops the object without storing it (after a failure); ends the writer. Never throws. */
  abort(): Promise<void>;
}

/** What `RepositoryBackend.requestStats` reports (the session report's `requests`). */
export interface BackendRequestStats {
  GET: number;
  PUT: number;
  LIST: number;
  DELETE: number;
  HEAD: number;
  /** Requests sent again after a transient failure (counted in the kinds too). */
  retries: number;
  /** Payload bytes sent and received. */
  bytesUp: number;
  bytesDown: number;
  /** Findings for the report, e.g. "bucket b has no Object Lock ...". */
  notes?: string[];
}

/** What `RepositoryBackend.protect` achieved. */
export interface StorageProtection {
  /** Objects were made read-only (mode bits, or the storage's equivalent). */
  readOnly: boolean;
  /** The storage itself refuses deletes and rewrites (an immutable attribute, an object lock). */
  immutable: boolean;
  /** Why `immutable` (or `readOnly`) is false, when it is. */
  note?: string;
}
