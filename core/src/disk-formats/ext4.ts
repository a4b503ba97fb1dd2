import { FerryError } from '../errors.js';
import type { ByteReader, FileData, FileStat, FileSystem, FileType } from './file-system.js';
import { joinPath, splitPath } from './file-system.js';
import { journaledReader, replayJournal } from './ext4-journal.js';

/**
 * A read-only ext2/ext3/ext4 reader written from the kernel's on-disk format documentation
 * (Documentation/filesystems/ext4/: super.rst, group_descr.rst, inodes.rst, ifork.rst, directory.rst).
 * It reads through a byte reader, so only the superblock, the group descriptors it needs, the inode
 * table blocks of the inodes it visits and the blocks of the files it reads are fetched.
 *
 * A file system backed up while mounted (`needsRecovery`) is read with its journal replayed in memory
 * (`ext4-journal.ts`), as the kernel would see it after mounting; nothing is written.
 */

const SUPERBLOCK_OFFSET = 1024;
const EXT4_MAGIC = 0xef53;

/** INCOMPAT features this reader understands; any other set bit is refused (DISK_FORMAT_UNSUPPORTED). */
const INCOMPAT = {
  FILETYPE: 0x2,
  RECOVER: 0x4,
  META_BG: 0x10,
  EXTENTS: 0x40,
  BIT64: 0x80,
  MMP: 0x100,
  FLEX_BG: 0x200,
  EA_INODE: 0x400,
  CSUM_SEED: 0x2000,
  LARGEDIR: 0x4000,
  INLINE_DATA: 0x8000,
  ENCRYPT: 0x10000,
  CASEFOLD: 0x20000,
} as const;
const INCOMPAT_NAMES: Record<number, string> = {
  0x1: 'compression',
  0x8: 'journal_dev',
  0x1000: 'dirdata',
};
const KNOWN_INCOMPAT = Object.values(INCOMPAT).reduce((a, b) => a | b, 0);
const RO_COMPAT_SPARSE_SUPER = 0x1;

const INODE_FLAG = { ENCRYPT: 0x800, EXTENTS: 0x80000, INLINE_DATA: 0x10000000 } as const;
const EXTENT_MAGIC = 0xf30a;
const ROOT_INODE = 2;

export interface Ext4Info {
  blockSize: number;
  blocksCount: number;
  inodesCount: number;
  inodeSize: number;
  groups: number;
  volumeName: string;
  uuid: string;
  /** The journal holds transactions not yet written to their place (the file system was mounted). */
  needsRecovery: boolean;
  incompat: number;
  /** When the journal was replayed in memory: committed transactions and blocks taken from it. */
  journal?: { transactions: number; blocks: number; notes: string[] };
}

export interface Ext4OpenOptions {
  /** Lay the journal's committed transactions over their home blocks (default true). */
  replayJournal?: boolean;
}

interface Inode {
  ino: number;
  raw: Uint8Array;
  mode: number;
  flags: number;
  size: number;
}

/** One mapped run of a file: `length` bytes at `fileOffset` are at `diskOffset` (null: a hole, reads as zeros). */
export interface Ext4Run {
  fileOffset: number;
  length: number;
  diskOffset: number | null;
}

function u16(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8);
}
function u32(b: Uint8Array, o: number): number {
  return (b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16)) + b[o + 3]! * 0x1000000;
}
function i32(b: Uint8Array, o: number): number {
  return b[o]! | (b[o + 1]! << 8) | (b[o + 2]! << 16) | (b[o + 3]! << 24);
}

function corrupt(detail: string): FerryError {
  return new FerryError('DISK_FORMAT_INVALID', `ext4: ${detail}`);
}

/** True when the bytes at the superblock position carry the ext2/3/4 magic. */
export async function isExt4(read: ByteReader): Promise<boolean> {
  try {
    const sb = await read(SUPERBLOCK_OFFSET, 0x60);
    return sb.length >= 0x3a && u16(sb, 0x38) === EXT4_MAGIC;
  } catch {
    return false;
  }
}

export class Ext4FileSystem implements FileSystem {
  readonly kind = 'ext4';
  private readonly blockCache = new Map<number, Uint8Array>();
  private readonly descCache = new Map<number, Uint8Array>();
  /** Name → inode of recently read folders, so walking a big folder's files does not re-read it per file. */
  private readonly dirCache = new Map<number, Map<string, number>>();

  private constructor(
    private readonly read: ByteReader,
    readonly info: Ext4Info,
    private readonly sb: Uint8Array,
  ) {}

  /** Reads and checks the superblock; refuses unknown INCOMPAT features with DISK_FORMAT_UNSUPPORTED. */
  static async open(read: ByteReader, opts: Ext4OpenOptions = {}): Promise<Ext4FileSystem> {
    const fs = await Ext4FileSystem.openRaw(read);
    const journalInode = u32(fs.sb, 0xe0);
    if (!fs.info.needsRecovery || opts.replayJournal === false || journalInode === 0) return fs;
    const journal = await fs.inode(journalInode);
    const runs = await fs.runs(journal);
    const bs = fs.info.blockSize;
    const replay = await replayJournal(read, bs, (logical) => {
      const at = logical * bs;
      const run = runs.find((r) => at >= r.fileOffset && at < r.fileOffset + r.length);
      return run && run.diskOffset !== null ? run.diskOffset + (at - run.fileOffset) : null;
    });
    const replayed = await Ext4FileSystem.openRaw(journaledReader(read, bs, replay.blocks));
    replayed.info.needsRecovery = true;
    replayed.info.journal = { transactions: replay.transactions, blocks: replay.blocks.size, notes: replay.notes };
    return replayed;
  }

  private static async openRaw(read: ByteReader): Promise<Ext4FileSystem> {
    const sb = await read(SUPERBLOCK_OFFSET, 1024);
    if (sb.length < 1024 || u16(sb, 0x38) !== EXT4_MAGIC) throw new FerryError('DISK_FORMAT_UNSUPPORTED', 'no ext2/ext3/ext4 superblock (magic 0xEF53) at byte 1024');
    const rev = u32(sb, 0x4c);
    const incompat = rev >= 1 ? u32(sb, 0x60) : 0;
    const unknown = incompat & ~KNOWN_INCOMPAT;
    if (unknown) {
      const names = [];
      for (let bit = 1; bit !== 0 && bit <= 0x80000000; bit = bit * 2) {
        if (unknown & bit) names.push(INCOMPAT_NAMES[bit] ?? `0x${bit.toString(16)}`);
        if (bit === 0x80000000) break;
      }
      throw new FerryError('DISK_FORMAT_UNSUPPORTED', `ext4: incompatible feature(s) this reader does not support: ${names.join(', ')}`);
    }
    const logBlock = u32(sb, 0x18);
    if (logBlock > 6) throw corrupt(`block size 2^(10+${logBlock}) is out of range`);
    const blockSize = 1024 << logBlock;
    const bit64 = (incompat & INCOMPAT.BIT64) !== 0;
    const blocksCount = u32(sb, 0x4) + (bit64 ? u32(sb, 0x150) * 2 ** 32 : 0);
    const blocksPerGroup = u32(sb, 0x20);
    const inodesPerGroup = u32(sb, 0x28);
    const firstDataBlock = u32(sb, 0x14);
    if (!blocksPerGroup || !inodesPerGroup) throw corrupt('blocks or inodes per group is zero');
    const inodeSize = rev >= 1 ? u16(sb, 0x58) : 128;
    if (inodeSize < 128 || inodeSize > blockSize || (inodeSize & (inodeSize - 1)) !== 0) throw corrupt(`inode size ${inodeSize} is invalid`);
    const groups = Math.ceil((blocksCount - firstDataBlock) / blocksPerGroup);
    const uuid = Buffer.from(sb.subarray(0x68, 0x78)).toString('hex').replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-');
    const name = Buffer.from(sb.subarray(0x78, 0x88)).toString('latin1').replace(/\0.*$/s, '');
    const info: Ext4Info = {
      blockSize,
      blocksCount,
      inodesCount: u32(sb, 0),
      inodeSize,
      groups,
      volumeName: name,
      uuid,
      needsRecovery: (incompat & INCOMPAT.RECOVER) !== 0,
      incompat,
    };
    return new Ext4FileSystem(read, info, sb);
  }

  private get descSize(): number {
    const bit64 = (this.info.incompat & INCOMPAT.BIT64) !== 0;
    return bit64 ? Math.max(32, u16(this.sb, 0xfe)) : 32;
  }

  private async block(n: number): Promise<Uint8Array> {
    const hit = this.blockCache.get(n);
    if (hit) return hit;
    if (n >= this.info.blocksCount) throw corrupt(`block ${n} is beyond the end of the file system (${this.info.blocksCount} blocks)`);
    const b = await this.read(n * this.info.blockSize, this.info.blockSize);
    if (this.blockCache.size >= 256) this.blockCache.delete(this.blockCache.keys().next().value as number);
    this.blockCache.set(n, b);
    return b;
  }

  private hasSuperBackup(group: number): boolean {
    if (!(u32(this.sb, 0x64) & RO_COMPAT_SPARSE_SUPER) || group <= 1) return true;
    for (const p of [3, 5, 7]) {
      let x = p;
      while (x < group) x *= p;
      if (x === group) return true;
    }
    return false;
  }

  /** The block holding the descriptor of `group` (classic layout after the superblock, or meta_bg). */
  private descBlockOf(group: number): { block: number; index: number } {
    const perBlock = this.info.blockSize / this.descSize;
    const descBlock = Math.floor(group / perBlock);
    const index = group % perBlock;
    const firstDataBlock = u32(this.sb, 0x14);
    const metaBg = (this.info.incompat & INCOMPAT.META_BG) !== 0;
    const firstMetaBg = u32(this.sb, 0x104);
    if (!metaBg || descBlock < firstMetaBg) return { block: firstDataBlock + 1 + descBlock, index };
    const firstGroup = descBlock * perBlock;
    const start = firstDataBlock + firstGroup * u32(this.sb, 0x20);
    return { block: start + (this.hasSuperBackup(firstGroup) ? 1 : 0), index };
  }

  private async inodeTableOf(group: number): Promise<number> {
    let desc = this.descCache.get(group);
    if (!desc) {
      const { block, index } = this.descBlockOf(group);
      const b = await this.block(block);
      desc = b.subarray(index * this.descSize, (index + 1) * this.descSize);
      this.descCache.set(group, desc);
    }
    const hi = this.descSize >= 64 ? u32(desc, 0x28) : 0;
    return u32(desc, 0x8) + hi * 2 ** 32;
  }

  private async inode(ino: number): Promise<Inode> {
    if (ino < 1 || ino > this.info.inodesCount) throw corrupt(`inode number ${ino} is out of range`);
    const ipg = u32(this.sb, 0x28);
    const group = Math.floor((ino - 1) / ipg);
    const table = await this.inodeTableOf(group);
    const byteInTable = ((ino - 1) % ipg) * this.info.inodeSize;
    const bs = this.info.blockSize;
    const blk = await this.block(table + Math.floor(byteInTable / bs));
    const raw = blk.subarray(byteInTable % bs, (byteInTable % bs) + this.info.inodeSize);
    const size = u32(raw, 0x4) + u32(raw, 0x6c) * 2 ** 32;
    return { ino, raw, mode: u16(raw, 0), flags: u32(raw, 0x20), size };
  }

  private statOf(inode: Inode, name: string): FileStat {
    const r = inode.raw;
    const extra = this.info.inodeSize > 128 ? u16(r, 0x80) : 0;
    const time = (base: number, extraOff: number): number => {
      let seconds = i32(r, base);
      let nanos = 0;
      if (extra && 0x80 + extra >= extraOff + 4) {
        const e = u32(r, extraOff);
        seconds += (e & 3) * 2 ** 32;
        nanos = Math.floor(e / 4);
      }
      return seconds * 1000 + nanos / 1e6;
    };
    const hasCrtime = extra && 0x80 + extra >= 0x94 + 4;
    return {
      name,
      type: fileType(inode.mode),
      size: inode.size,
      mode: inode.mode & 0o7777,
      uid: u16(r, 0x2) | (u16(r, 0x78) << 16),
      gid: u16(r, 0x18) | (u16(r, 0x7a) << 16),
      mtimeMs: time(0x10, 0x88),
      atimeMs: time(0x8, 0x8c),
      ctimeMs: time(0xc, 0x84),
      birthtimeMs: hasCrtime ? time(0x90, 0x94) : undefined,
      links: u16(r, 0x1a),
      id: inode.ino,
    };
  }

  /** The mapped runs of a file or directory in file order; unmapped ranges come as holes. */
  async runs(inode: Inode): Promise<Ext4Run[]> {
    const bs = this.info.blockSize;
    const out: Ext4Run[] = [];
    const push = (logical: number, physical: number | null, count: number): void => {
      const fileOffset = logical * bs;
      if (fileOffset >= inode.size) return;
      const length = Math.min(count * bs, inode.size - fileOffset);
      const last = out[out.length - 1];
      if (last && last.fileOffset + last.length === fileOffset) {
        if (physical === null && last.diskOffset === null) return void (last.length += length);
        if (physical !== null && last.diskOffset !== null && last.diskOffset + last.length === physical * bs)
          return void (last.length += length);
      }
      out.push({ fileOffset, length, diskOffset: physical === null ? null : physical * bs });
    };
    if (inode.flags & INODE_FLAG.EXTENTS) await this.walkExtents(inode.raw.subarray(0x28, 0x28 + 60), push, 0);
    else await this.walkBlockMap(inode.raw, push);
    // Fill gaps between runs (and after the last one) as holes so callers see the whole file.
    const filled: Ext4Run[] = [];
    let at = 0;
    for (const r of out.sort((a, b) => a.fileOffset - b.fileOffset)) {
      if (r.fileOffset > at) filled.push({ fileOffset: at, length: r.fileOffset - at, diskOffset: null });
      filled.push(r);
      at = r.fileOffset + r.length;
    }
    if (at < inode.size) filled.push({ fileOffset: at, length: inode.size - at, diskOffset: null });
    return filled;
  }

  private async walkExtents(node: Uint8Array, push: (l: number, p: number | null, n: number) => void, level: number): Promise<void> {
    if (u16(node, 0) !== EXTENT_MAGIC) throw corrupt('extent header magic is not 0xF30A');
    const entries = u16(node, 2);
    const depth = u16(node, 6);
    if (depth > 5 || level > 5) throw corrupt(`extent tree depth ${depth} is too deep`);
    if (12 + entries * 12 > node.length) throw corrupt('extent node holds more entries than fit');
    for (let i = 0; i < entries; i++) {
      const e = 12 + i * 12;
      if (depth === 0) {
        let len = u16(node, e + 4);
        const uninit = len > 32768;
        if (uninit) len -= 32768;
        const start = u16(node, e + 6) * 2 ** 32 + u32(node, e + 8);
        // Uninitialized (preallocated) extents read as zeros, like a hole.
        push(u32(node, e), uninit ? null : start, len);
      } else {
        const leaf = u32(node, e + 4) + u16(node, e + 8) * 2 ** 32;
        await this.walkExtents(await this.block(leaf), push, level + 1);
      }
    }
  }

  private async walkBlockMap(raw: Uint8Array, push: (l: number, p: number | null, n: number) => void): Promise<void> {
    const bs = this.info.blockSize;
    const per = bs / 4;
    const total = Math.ceil(u32(raw, 0x4) / bs) + Math.ceil((u32(raw, 0x6c) * 2 ** 32) / bs);
    for (let i = 0; i < 12 && i < total; i++) {
      const b = u32(raw, 0x28 + i * 4);
      if (b) push(i, b, 1);
    }
    const walk = async (ptr: number, level: number, first: number): Promise<void> => {
      if (!ptr || first >= total) return;
      const blk = await this.block(ptr);
      const span = per ** level;
      for (let i = 0; i < per; i++) {
        const logical = first + i * span;
        if (logical >= total) break;
        const b = u32(blk, i * 4);
        if (!b) continue;
        if (level === 0) push(logical, b, 1);
        else await walk(b, level - 1, logical);
      }
    };
    await walk(u32(raw, 0x28 + 48), 0, 12);
    await walk(u32(raw, 0x28 + 52), 1, 12 + per);
    await walk(u32(raw, 0x28 + 56), 2, 12 + per + per * per);
  }

  /** The value of the in-inode extended attribute `system.data` (inline data beyond the first 60 bytes). */
  private inlineXattr(inode: Inode): Uint8Array {
    const r = inode.raw;
    const extra = this.info.inodeSize > 128 ? u16(r, 0x80) : 0;
    const start = 0x80 + extra;
    if (!extra || start + 4 > r.length || u32(r, start) !== 0xea020000) return new Uint8Array(0);
    const base = start + 4;
    for (let e = base; e + 16 <= r.length && u32(r, e) !== 0; ) {
      const nameLen = r[e]!;
      const nameIndex = r[e + 1]!;
      const valueOffs = u16(r, e + 2);
      const valueSize = u32(r, e + 8);
      const name = Buffer.from(r.subarray(e + 16, e + 16 + nameLen)).toString('latin1');
      if (nameIndex === 7 && name === 'data') {
        if (base + valueOffs + valueSize > r.length) throw corrupt(`inode ${inode.ino}: inline data attribute runs past the inode`);
        return r.subarray(base + valueOffs, base + valueOffs + valueSize);
      }
      e += (16 + nameLen + 3) & ~3;
    }
    return new Uint8Array(0);
  }

  private inlineBytes(inode: Inode): Uint8Array {
    const first = inode.raw.subarray(0x28, 0x28 + 60);
    const rest = this.inlineXattr(inode);
    const all = new Uint8Array(first.length + rest.length);
    all.set(first);
    all.set(rest, first.length);
    return all.subarray(0, Math.min(all.length, inode.size));
  }

  /** The whole content of a small object (directory, slow symlink). */
  private async readAll(inode: Inode): Promise<Uint8Array> {
    if (inode.size > 1 << 30) throw corrupt(`inode ${inode.ino}: directory or link of ${inode.size} bytes is implausibly large`);
    const out = new Uint8Array(inode.size);
    for await (const chunk of this.chunksOf(inode)) out.set(chunk.data, chunk.offset);
    return out;
  }

  private async *chunksOf(inode: Inode): AsyncGenerator<FileData> {
    if (inode.flags & INODE_FLAG.ENCRYPT) throw new FerryError('DISK_FORMAT_UNSUPPORTED', `ext4: inode ${inode.ino} is encrypted (fscrypt)`);
    if (inode.flags & INODE_FLAG.INLINE_DATA) {
      const data = this.inlineBytes(inode);
      if (data.length) yield { offset: 0, data };
      return;
    }
    const CHUNK = 1 << 20;
    for (const run of await this.runs(inode)) {
      if (run.diskOffset === null) continue;
      for (let at = 0; at < run.length; at += CHUNK) {
        const n = Math.min(CHUNK, run.length - at);
        yield { offset: run.fileOffset + at, data: await this.read(run.diskOffset + at, n) };
      }
    }
  }

  private async namesOf(dir: Inode): Promise<Map<string, number>> {
    const hit = this.dirCache.get(dir.ino);
    if (hit) return hit;
    const names = new Map((await this.entriesOf(dir)).map((e) => [e.name, e.ino] as const));
    if (this.dirCache.size >= 64) this.dirCache.delete(this.dirCache.keys().next().value as number);
    this.dirCache.set(dir.ino, names);
    return names;
  }

  private async entriesOf(dir: Inode): Promise<Array<{ name: string; ino: number }>> {
    if ((dir.mode & 0xf000) !== 0x4000) throw new FerryError('DISK_PATH_NOT_FOUND', `ext4: inode ${dir.ino} is not a directory`);
    const filetype = (this.info.incompat & INCOMPAT.FILETYPE) !== 0;
    const out: Array<{ name: string; ino: number }> = [];
    const parse = (buf: Uint8Array, blockLen: number): void => {
      for (let base = 0; base < buf.length; base += blockLen) {
        const end = Math.min(buf.length, base + blockLen);
        for (let o = base; o + 8 <= end; ) {
          const ino = u32(buf, o);
          let recLen = u16(buf, o + 4);
          if (recLen === 0 || recLen === 65535) recLen = 65536;
          const nameLen = filetype ? buf[o + 6]! : u16(buf, o + 6);
          if (recLen < 8 || o + recLen > end || 8 + nameLen > recLen) throw corrupt(`directory inode ${dir.ino}: bad entry at byte ${o}`);
          if (ino !== 0 && nameLen > 0) {
            const name = Buffer.from(buf.subarray(o + 8, o + 8 + nameLen)).toString('utf8');
            if (name !== '.' && name !== '..') out.push({ name, ino });
          }
          o += recLen;
        }
      }
    };
    if (dir.flags & INODE_FLAG.INLINE_DATA) {
      // Inline directory: 4 bytes of parent inode, then entries in i_block, then in system.data.
      const first = dir.raw.subarray(0x28 + 4, 0x28 + 60);
      parse(first, first.length);
      const rest = this.inlineXattr(dir);
      if (rest.length) parse(rest, rest.length);
      return out;
    }
    // Hash-indexed (htree) directories are read linearly: their index blocks look like empty entries.
    parse(await this.readAll(dir), this.info.blockSize);
    return out;
  }

  /**
   * The inode at `path`. Symlinks among the folders on the way are followed as the guest would
   * (`/lib/systemd` where `/lib` links to `usr/lib`), at most 40 of them, never above the root; the
   * last component is not followed (stat and list see the link itself).
   */
  private async lookup(path: string): Promise<{ inode: Inode; name: string }> {
    let parts = splitPath(path);
    for (let hops = 0; ; hops++) {
      let inode = await this.inode(ROOT_INODE);
      let name = '/';
      let followed = false;
      for (let i = 0; i < parts.length; i++) {
        const part = parts[i]!;
        if ((inode.mode & 0xf000) === 0xa000) {
          if (hops >= 40) throw new FerryError('DISK_PATH_NOT_FOUND', `too many symbolic links in ${path}`);
          const target = Buffer.from(await this.linkBytes(inode)).toString('utf8');
          const base = target.startsWith('/') ? [] : parts.slice(0, i - 1);
          parts = normalize([...base, ...target.split('/'), ...parts.slice(i)]);
          followed = true;
          break;
        }
        const entries = await this.namesOf(inode).catch((err: unknown) => {
          if (err instanceof FerryError && err.code === 'DISK_PATH_NOT_FOUND')
            throw new FerryError('DISK_PATH_NOT_FOUND', `${joinPath(parts.slice(0, i))} is not a directory`);
          throw err;
        });
        const ino = entries.get(part);
        if (ino === undefined) throw new FerryError('DISK_PATH_NOT_FOUND', `no ${joinPath(parts.slice(0, i + 1))} in the file system`);
        inode = await this.inode(ino);
        name = part;
      }
      if (!followed) return { inode, name };
    }
  }

  async stat(path: string): Promise<FileStat> {
    const { inode, name } = await this.lookup(path);
    return this.statOf(inode, name);
  }

  async list(path: string): Promise<FileStat[]> {
    const { inode } = await this.lookup(path);
    const entries = await this.entriesOf(inode);
    const out: FileStat[] = [];
    for (const e of entries) out.push(this.statOf(await this.inode(e.ino), e.name));
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async readLink(path: string): Promise<string> {
    const { inode } = await this.lookup(path);
    if ((inode.mode & 0xf000) !== 0xa000) throw new FerryError('DISK_PATH_NOT_FOUND', `${path} is not a symbolic link`);
    return Buffer.from(await this.linkBytes(inode)).toString('utf8');
  }

  /** A link's target: in i_block for fast links (under 60 bytes), inline data, or data blocks. */
  private async linkBytes(inode: Inode): Promise<Uint8Array> {
    if (inode.flags & INODE_FLAG.INLINE_DATA) return this.inlineBytes(inode);
    if (inode.size < 60) return inode.raw.subarray(0x28, 0x28 + inode.size);
    return this.readAll(inode);
  }

  async *readFile(path: string): AsyncGenerator<FileData> {
    const { inode } = await this.lookup(path);
    if ((inode.mode & 0xf000) !== 0x8000) throw new FerryError('DISK_PATH_NOT_FOUND', `${path} is not a regular file`);
    yield* this.chunksOf(inode);
  }
}

/** Path components with `.` dropped and `..` applied; `..` at the root stays at the root, as in a kernel. */
function normalize(parts: string[]): string[] {
  const out: string[] = [];
  for (const p of parts) {
    if (p === '' || p === '.') continue;
    if (p === '..') out.pop();
    else out.push(p);
  }
  return out;
}

function fileType(mode: number): FileType {
  switch (mode & 0xf000) {
    case 0x8000:
      return 'file';
    case 0x4000:
      return 'dir';
    case 0xa000:
      return 'symlink';
    default:
      return 'other';
  }
}
