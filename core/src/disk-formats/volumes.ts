import { FerryError } from '../errors.js';
import { readExactly, sliceReader, type DiskReader } from './disk-reader.js';
import { Ext4FileSystem, isExt4 } from './ext4.js';
import type { FileSystem } from './file-system.js';
import { NtfsFileSystem } from './ntfs-file-system.js';
import { NtfsVolume } from './ntfs.js';
import { readPartitionTable, type Partition, type PartitionTable } from './partitions.js';

export type FileSystemKind = 'ext4' | 'ntfs';

/** A place on a disk that may hold a file system: a partition, or the whole disk when it has no table. */
export interface Volume {
  /** Partition number as Linux names it (`sda1` → 1); 0 for a whole disk without a partition table. */
  partition: number;
  /** Byte offset of its first byte on the disk, and its length. */
  start: number;
  size: number;
  /** The partition's type name (`linux`, `ntfs`, `microsoft-basic-data`, ...); `disk` for a whole disk. */
  typeName: string;
  /** GPT only: the partition's name. */
  name?: string;
  /** The file system found by its signature (ext2/3/4 superblock magic, NTFS OEM id), or null. */
  fileSystem: FileSystemKind | null;
}

/** The volumes of a disk: its partitions (extended containers left out), or the whole disk. */
export async function findVolumes(read: DiskReader, diskSize: number): Promise<{ table: PartitionTable; volumes: Volume[] }> {
  const table = await readPartitionTable(read, diskSize);
  const slots: Array<Pick<Partition, 'index' | 'start' | 'size' | 'typeName' | 'name'>> =
    table.scheme === 'none'
      ? [{ index: 0, start: 0, size: diskSize, typeName: 'disk' }]
      : table.partitions.filter((p) => p.typeName !== 'extended');
  const volumes: Volume[] = [];
  for (const p of slots) {
    const size = Math.min(p.size, Math.max(0, diskSize - p.start));
    volumes.push({
      partition: p.index,
      start: p.start,
      size,
      typeName: p.typeName,
      ...(p.name ? { name: p.name } : {}),
      fileSystem: await detectFileSystem(sliceReader(read, p.start), size),
    });
  }
  return { table, volumes };
}

/** The file system at the start of `read` by its signature, or null. */
export async function detectFileSystem(read: DiskReader, size: number): Promise<FileSystemKind | null> {
  if (await NtfsVolume.probe(read, size)) return 'ntfs';
  if (size >= 2048 && (await isExt4(read))) return 'ext4';
  return null;
}

/** Opens the file system of a volume; DISK_FORMAT_UNSUPPORTED when none this reader knows is there. */
export async function openFileSystem(read: DiskReader, volume: Volume): Promise<FileSystem> {
  const at = sliceReader(read, volume.start);
  const bounded: DiskReader = (offset, length) => {
    if (offset < 0 || offset + length > volume.size) {
      throw new FerryError('DISK_FORMAT_INVALID', `a read of ${length} bytes at ${offset} runs past the end of ${describeVolume(volume)} (${volume.size} bytes)`, {
        offset: volume.start + offset,
      });
    }
    return readExactly(at, offset, length, describeVolume(volume));
  };
  switch (volume.fileSystem) {
    case 'ext4':
      return Ext4FileSystem.open(bounded);
    case 'ntfs':
      return NtfsFileSystem.open(bounded, volume.size);
    default:
      throw new FerryError('DISK_FORMAT_UNSUPPORTED', `${describeVolume(volume)} (${volume.typeName}) holds no file system Ferry can read (ext2/3/4, NTFS)`);
  }
}

export function describeVolume(v: Volume): string {
  return v.partition === 0 ? 'the whole disk' : `partition ${v.partition}`;
}
