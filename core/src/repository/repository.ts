import { randomBytes, randomUUID } from 'node:crypto';
import type { ChangeTracking } from '../contracts/source-host.js';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import { BlockMap } from './block-map.js';
import { BlockStore, type WriteMeter } from './block-store.js';

export const REPOSITORY_CONFIG_KEY = 'ferry-repository.json';
const FORMAT = 'ferry-repository';
const FORMAT_VERSION = 1;

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

  private constructor(
    readonly backend: RepositoryBackend,
    readonly id: string,
    meter?: WriteMeter,
  ) {
    this.blocks = new BlockStore(backend, meter);
  }

  /** Opens the repository; creates it when `create` is set and the location holds no config yet. */
  static async open(backend: RepositoryBackend, opts: { create: boolean; writeMeter?: WriteMeter }): Promise<Repository> {
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
      const config = { format: FORMAT, version: FORMAT_VERSION, id: randomUUID(), createdAt: new Date().toISOString() };
      await backend.put(REPOSITORY_CONFIG_KEY, Buffer.from(JSON.stringify(config, null, 2) + '\n'));
      return new Repository(backend, config.id, opts.writeMeter);
    }
    const config = parseJson(raw, REPOSITORY_CONFIG_KEY) as { format?: string; version?: number; id?: string };
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
    return new Repository(backend, String(config.id), opts.writeMeter);
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

function parseJson(raw: Uint8Array, object: string): unknown {
  try {
    return JSON.parse(Buffer.from(raw).toString('utf8'));
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `not valid JSON: ${(err as Error).message}`, { object }, { cause: err });
  }
}
