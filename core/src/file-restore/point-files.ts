import { FerryError } from '../errors.js';
import type { DiskReader } from '../disk-formats/disk-reader.js';
import type { FileSystem } from '../disk-formats/file-system.js';
import { describeVolume, findVolumes, openFileSystem, type Volume } from '../disk-formats/volumes.js';
import type { PartitionTable } from '../disk-formats/partitions.js';
import { openPointReader } from '../restore-access/point-access.js';
import type { PointReader } from '../restore-access/point-reader.js';
import type { JobRuntime } from '../session/job-runtime.js';

/** What was read from the repository to answer: data blocks fetched (each checked) and their bytes. */
export interface PointReadFigures {
  blocks: number;
  bytes: number;
  /** The repository block size, the disk's blocks and how many of them hold data (not zero). */
  blockSize: number;
  diskBlocks: number;
  diskDataBlocks: number;
}

/**
 * The file systems on one disk of a restore point, read through a `PointReader` without read-ahead,
 * so only the blocks the file system structures and the asked-for files live in are fetched.
 */
export class PointFiles {
  private constructor(
    private readonly reader: PointReader,
    readonly table: PartitionTable,
    readonly volumes: Volume[],
  ) {}

  static async open(rt: JobRuntime, sel: { vm: string; disk: string; point: string }): Promise<PointFiles> {
    const reader = await openPointReader(rt, sel, { readAhead: 0 });
    try {
      const read: DiskReader = (offset, length) => reader.read(offset, length);
      const { table, volumes } = await findVolumes(read, reader.size);
      return new PointFiles(reader, table, volumes);
    } catch (err) {
      await reader.close();
      throw err;
    }
  }

  get restorePoint(): string {
    return this.reader.point.id;
  }

  get diskSize(): number {
    return this.reader.size;
  }

  /**
   * The volumes to work on: the one numbered `partition`, or (when none is named) every volume that
   * holds a file system this reader knows. DISK_PATH_NOT_FOUND when that leaves none.
   */
  select(partition?: number): Volume[] {
    if (partition !== undefined) {
      const v = this.volumes.find((x) => x.partition === partition);
      if (!v) {
        throw new FerryError('DISK_PATH_NOT_FOUND', `the disk has no partition ${partition}; its partitions: ${this.volumes.map((x) => x.partition).join(', ') || 'none'}`);
      }
      return [v];
    }
    const withFs = this.volumes.filter((v) => v.fileSystem !== null);
    if (withFs.length === 0) {
      throw new FerryError(
        'DISK_FORMAT_UNSUPPORTED',
        `no ext2/3/4 or NTFS file system found on the disk (${this.table.scheme === 'none' ? 'no partition table' : `${this.volumes.length} partition(s): ${this.volumes.map((v) => `${v.partition} ${v.typeName}`).join(', ')}`})`,
      );
    }
    return withFs;
  }

  async fileSystem(volume: Volume): Promise<FileSystem> {
    const read: DiskReader = (offset, length) => this.reader.read(offset, length);
    return openFileSystem(read, volume).catch((err: unknown) => {
      throw err instanceof FerryError ? new FerryError(err.code, `${describeVolume(volume)}: ${err.detail}`, err.where) : err;
    });
  }

  get figures(): PointReadFigures {
    const f = this.reader.figures;
    const map = this.reader.map;
    let data = 0;
    for (let i = 0; i < map.blockCount; i++) if (map.get(i)) data++;
    return { blocks: f.blocksFetched, bytes: f.bytesFetched, blockSize: map.blockSize, diskBlocks: map.blockCount, diskDataBlocks: data };
  }

  close(): Promise<void> {
    return this.reader.close();
  }
}
