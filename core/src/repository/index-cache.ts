import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, readdir, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { RUN_ENTRY } from './block-index.js';

/**
 * The local index cache (`docs/repository-format.md`, "Local index cache"): index objects as stored,
 * one file per key, and a snapshot of the built in-memory index. Only ever a cache: every file is
 * checked by its SHA-256 before use, a cached object is used only while its key is listed in the
 * repository, and any failure to read or write it costs time, never correctness.
 */

/** `$FERRY_CACHE_DIR`, else `$XDG_CACHE_HOME/ferry`, else `~/.cache/ferry`. */
export function cacheRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.FERRY_CACHE_DIR) return env.FERRY_CACHE_DIR;
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'ferry');
  return path.join(os.homedir(), '.cache', 'ferry');
}

const SNAPSHOT = 'index.snapshot';
const SNAPSHOT_MAGIC = Buffer.from('FXC1', 'ascii');

/** A snapshot of the built index: what it was built from, and its run (`BlockIndex.exportRun`). */
export interface IndexSnapshot {
  /** The index keys it covers (parsed on demand: `listDigest` usually decides alone). */
  keys(): string[];
  /** SHA-256 of the keys in listing order: equal to the current listing's means the same keys. */
  listDigest: string;
  /** A digest of everything else that decided it (damage, missing packs). */
  digest: string;
  packs: string[];
  prefix: Uint32Array;
  run: Uint8Array;
}

export class IndexCache {
  private broken = false;

  constructor(
    /** `<cache root>/<repository id>` */
    readonly dir: string,
    private readonly warn: (line: string) => void = (l) => process.stderr.write(`ferry: ${l}\n`),
  ) {}

  static forRepository(id: string, env: NodeJS.ProcessEnv = process.env): IndexCache {
    return new IndexCache(path.join(cacheRoot(env), id));
  }

  /** The stored bytes of `key`, when cached and intact; a damaged file is removed. */
  async read(key: string): Promise<Uint8Array | undefined> {
    if (this.broken) return undefined;
    let file: Buffer;
    try {
      file = await readFile(this.file(key));
    } catch {
      return undefined;
    }
    const body = file.subarray(32);
    if (file.length < 32 || !sha256(body).equals(file.subarray(0, 32))) {
      await rm(this.file(key), { force: true }).catch(() => undefined);
      return undefined;
    }
    return body;
  }

  /** Keeps the stored bytes of `key` (atomically: a temporary file, then a rename). */
  async write(key: string, stored: Uint8Array): Promise<void> {
    await this.atomicWrite(this.file(key), [sha256(stored), stored]);
  }

  /** Removes these cached objects (their keys are no longer listed). */
  async forget(keys: string[]): Promise<void> {
    for (const k of keys) await rm(this.file(k), { force: true }).catch(() => undefined);
  }

  /** Removes cached objects under `prefix` whose key is not in `listed` (merged or condemned away). */
  async retainOnly(prefix: string, listed: Set<string>): Promise<void> {
    if (this.broken) return;
    const root = path.join(this.dir, 'objects', prefix);
    let names: string[];
    try {
      names = (await readdir(root, { recursive: true, withFileTypes: true })).filter((d) => d.isFile()).map((d) => path.join(d.parentPath, d.name));
    } catch {
      return;
    }
    for (const f of names) {
      const key = path.relative(path.join(this.dir, 'objects'), f).split(path.sep).join('/');
      if (!listed.has(key)) await rm(f, { force: true }).catch(() => undefined);
    }
  }

  async readSnapshot(): Promise<IndexSnapshot | undefined> {
    if (this.broken) return undefined;
    let file: Buffer;
    try {
      file = await readFile(path.join(this.dir, SNAPSHOT));
    } catch {
      return undefined;
    }
    const body = file.subarray(0, file.length - 32);
    if (file.length < 48 || !body.subarray(0, 4).equals(SNAPSHOT_MAGIC) || !sha256(body).equals(file.subarray(file.length - 32))) {
      await rm(path.join(this.dir, SNAPSHOT), { force: true }).catch(() => undefined);
      return undefined;
    }
    try {
      const headLength = body.readUInt32LE(4);
      const head = JSON.parse(body.subarray(8, 8 + headLength).toString('utf8')) as { listDigest: string; digest: string; packs: string[] };
      let at = 8 + headLength;
      const keysLength = body.readUInt32LE(at);
      const keysJson = body.subarray(at + 4, at + 4 + keysLength);
      at += 4 + keysLength;
      at += (4 - (at % 4)) % 4;
      const prefix = new Uint32Array(65537);
      Buffer.from(prefix.buffer).set(body.subarray(at, at + prefix.byteLength));
      at += prefix.byteLength;
      const run = body.subarray(at);
      // Written by another layout (another Ferry version): not this one's snapshot.
      if (!Array.isArray(head.packs) || run.length !== prefix[65536] * RUN_ENTRY) return undefined;
      return { ...head, keys: () => JSON.parse(keysJson.toString('utf8')) as string[], prefix, run };
    } catch {
      return undefined;
    }
  }

  /**
   * `magic ‖ u32 head length ‖ head (JSON: digests, pack ids) ‖ u32 keys length ‖ keys (JSON) ‖ pad
   * to 4 ‖ prefix table ‖ run ‖ SHA-256 of everything before it`.
   */
  async writeSnapshot(s: IndexSnapshot): Promise<void> {
    const head = Buffer.from(JSON.stringify({ listDigest: s.listDigest, digest: s.digest, packs: s.packs }), 'utf8');
    const keys = Buffer.from(JSON.stringify(s.keys()), 'utf8');
    const lead = Buffer.alloc(8);
    SNAPSHOT_MAGIC.copy(lead, 0);
    lead.writeUInt32LE(head.length, 4);
    const keysLead = Buffer.alloc(4);
    keysLead.writeUInt32LE(keys.length, 0);
    const pad = Buffer.alloc((4 - ((8 + head.length + 4 + keys.length) % 4)) % 4);
    const prefix = Buffer.from(s.prefix.buffer, s.prefix.byteOffset, s.prefix.byteLength);
    const parts = [lead, head, keysLead, keys, pad, prefix, s.run];
    const hash = createHash('sha256');
    for (const p of parts) hash.update(p);
    await this.atomicWrite(path.join(this.dir, SNAPSHOT), [...parts, hash.digest()]);
  }

  private file(key: string): string {
    return path.join(this.dir, 'objects', ...key.split('/'));
  }

  private async atomicWrite(file: string, parts: Uint8Array[]): Promise<void> {
    if (this.broken) return;
    const tmp = `${file}.${randomBytes(4).toString('hex')}.tmp`;
    try {
      await mkdir(path.dirname(file), { recursive: true });
      const fh = await open(tmp, 'w');
      try {
        for (const p of parts) await fh.write(p);
      } finally {
        await fh.close();
      }
      await rename(tmp, file);
    } catch (err) {
      this.broken = true;
      await rm(tmp, { force: true }).catch(() => undefined);
      this.warn(`the index cache at ${this.dir} cannot be written (${(err as Error).message}); carrying on without it`);
    }
  }
}

/** The digest of a listing, in its order (`IndexSnapshot.listDigest`). */
export function listDigest(keys: string[]): string {
  const h = createHash('sha256');
  for (const k of keys) h.update(`${k}\n`);
  return h.digest('hex');
}

function sha256(data: Uint8Array): Buffer {
  return createHash('sha256').update(data).digest();
}
