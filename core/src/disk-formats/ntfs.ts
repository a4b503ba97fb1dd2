import { FerryError } from '../errors.js';
import { type DiskReader, readExactly } from './disk-reader.js';
import {
  applyFixups,
  ATTR,
  ATTR_FLAG_COMPRESSED,
  ATTR_FLAG_ENCRYPTED,
  type Attribute,
  type BootSector,
  type IndexEntry,
  invalid,
  type MftRecord,
  NAMESPACE_DOS,
  parseAttributeList,
  parseBootSector,
  parseIndexNode,
  parseMftRecord,
  parseStandardInformation,
  RECORD_DIRECTORY,
  RECORD_IN_USE,
  type Run,
} from './ntfs-structures.js';

/**
 * A read-only NTFS volume, read through a `DiskReader` whose offset 0 is the volume's first byte
 * (wrap a disk reader with `sliceReader(read, partition.start)`). Paths use `/` (or `\`), start at
 * the root and match names exactly, else case-insensitively (as Windows does for Win32 names).
 * Attributes spread over several MFT records through $ATTRIBUTE_LIST are followed; compressed and
 * encrypted file contents are `DISK_FORMAT_UNSUPPORTED` (their extents are still reported).
 */

export interface NtfsEntry {
  name: string;
  /** Full path from the root, `/` separated, starting with `/`. */
  path: string;
  /** MFT record number (the inode). */
  record: number;
  isDirectory: boolean;
  /** Bytes of the unnamed $DATA stream (0 for a directory). */
  size: number;
  /** Bytes of clusters allocated to the unnamed $DATA stream (0 when it is resident in the MFT). */
  allocatedSize: number;
  /** From $STANDARD_INFORMATION. */
  created: Date;
  modified: Date;
  /** When the MFT record last changed. */
  changed: Date;
  accessed: Date;
  /** Windows file attribute bits (`FILE_ATTRIBUTE_*`: 0x1 read-only, 0x2 hidden, 0x4 system, 0x20 archive, ...). */
  attributes: number;
}

/** A piece of a file's unnamed $DATA stored in clusters: `length` bytes at `volumeOffset`, holding the file's bytes from `fileOffset`. */
export interface NtfsExtent {
  fileOffset: number;
  volumeOffset: number;
  length: number;
}

/** An attribute gathered from every MFT record that holds a piece of it. */
interface Stream {
  type: number;
  name: string;
  flags: number;
  value?: Uint8Array;
  runs: Run[];
  dataSize: number;
  initializedSize: number;
  allocatedSize: number;
}

const ROOT = 5;
const CACHE_RECORDS = 1024;
const MAX_DEPTH = 64;
/** Far above what any file needs (an entry per attribute piece, ~32 bytes each). */
const MAX_ATTRIBUTE_LIST = 4 * 1024 * 1024;

export class NtfsVolume {
  readonly boot: BootSector;
  private mftRuns: Run[] = [];
  private readonly cache = new Map<number, MftRecord>();

  private constructor(
    private readonly read: DiskReader,
    boot: BootSector,
    /** Bytes readable through `read`. */
    readonly size: number,
  ) {
    this.boot = boot;
  }

  get clusterSize(): number {
    return this.boot.clusterSize;
  }

  /** Opens the volume: boot sector, then $MFT's own record for the MFT's layout. */
  static async open(read: DiskReader, size: number): Promise<NtfsVolume> {
    return malformed(() => NtfsVolume.openVolume(read, size));
  }

  private static async openVolume(read: DiskReader, size: number): Promise<NtfsVolume> {
    if (size < 512) throw invalid('boot sector', `volume of ${size} bytes`, 0);
    const boot = parseBootSector(await readExactly(read, 0, 512, 'NTFS boot sector'));
    const fsSize = boot.totalSectors * boot.bytesPerSector;
    if (fsSize > size) throw invalid('boot sector', `the file system's ${fsSize} bytes exceed the ${size} bytes of its partition`, 0x28);
    const vol = new NtfsVolume(read, boot, size);
    const at = boot.mftLcn * boot.clusterSize;
    vol.checkRange(at, boot.recordSize, '$MFT record 0');
    // A copy: fixups are undone in place, and a reader may hand out a view of memory it keeps.
    const rec0 = parseMftRecord(new Uint8Array(await readExactly(read, at, boot.recordSize, 'MFT record 0')), 0, at);
    const first = rec0.attributes.find((a) => a.type === ATTR.DATA && a.name === '' && a.nonResident);
    if (!first?.runs?.length) throw invalid('MFT record 0', '$MFT has no non-resident $DATA', at);
    vol.mftRuns = first.runs;
    vol.cache.set(0, rec0);
    // A fragmented $MFT continues its runs in extension records named by its $ATTRIBUTE_LIST.
    const data = (await vol.streams(0)).get(`${ATTR.DATA}:`);
    if (data) vol.mftRuns = data.runs;
    return vol;
  }

  /** True when sector 0 of `read` looks like an NTFS boot sector (the "NTFS    " OEM id and 0x55aa). */
  static async probe(read: DiskReader, size: number): Promise<boolean> {
    if (size < 512) return false;
    const b = await readExactly(read, 0, 512, 'boot sector');
    return Buffer.from(b.subarray(3, 11)).toString('latin1') === 'NTFS    ' && b[510] === 0x55 && b[511] === 0xaa;
  }

  /** Looks up `path`: a file or directory. Missing: `DISK_PATH_NOT_FOUND`. */
  stat(path: string): Promise<NtfsEntry> {
    return malformed(() => this.lookup(path));
  }

  private async lookup(path: string): Promise<NtfsEntry> {
    const parts = splitPath(path);
    let entry = await this.entry(ROOT, '', '/');
    for (const part of parts) {
      if (!entry.isDirectory) throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: ${entry.path} is not a directory (looking up ${path})`);
      const found = await this.findChild(entry.record, part);
      if (found === undefined) throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: no ${part} in ${entry.path}`);
      entry = await this.entry(found.record, found.name, joinPath(entry.path, found.name));
    }
    return entry;
  }

  /** The entries of the directory at `path`, in index order, without `.` and 8.3 aliases. */
  list(path: string): Promise<NtfsEntry[]> {
    return malformed(() => this.listDir(path));
  }

  private async listDir(path: string): Promise<NtfsEntry[]> {
    const dir = await this.lookup(path);
    if (!dir.isDirectory) throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: ${dir.path} is not a directory`);
    const out: NtfsEntry[] = [];
    for (const e of await this.indexEntries(dir.record)) out.push(await this.entry(e.record, e.name, joinPath(dir.path, e.name)));
    return out;
  }

  /** Where the unnamed $DATA of a file lies on the volume, in file order; sparse parts have none. */
  extents(path: string | NtfsEntry): Promise<NtfsExtent[]> {
    return malformed(() => this.dataExtents(path));
  }

  private async dataExtents(path: string | NtfsEntry): Promise<NtfsExtent[]> {
    const entry = typeof path === 'string' ? await this.lookup(path) : path;
    const data = (await this.streams(entry.record)).get(`${ATTR.DATA}:`);
    if (!data || data.value) return [];
    const cs = this.clusterSize;
    const out: NtfsExtent[] = [];
    for (const r of data.runs) {
      if (r.lcn === undefined) continue;
      this.checkRange(r.lcn * cs, r.length * cs, `data run of ${entry.path}`);
      const prev = out[out.length - 1];
      if (prev && prev.volumeOffset + prev.length === r.lcn * cs && prev.fileOffset + prev.length === r.vcn * cs) prev.length += r.length * cs;
      else out.push({ fileOffset: r.vcn * cs, volumeOffset: r.lcn * cs, length: r.length * cs });
    }
    return out;
  }

  /** `length` bytes of a file from `offset` (fewer at its end; by default up to 16 MiB). */
  readFile(path: string | NtfsEntry, offset = 0, length = 16 * 1024 * 1024): Promise<Uint8Array> {
    return malformed(() => this.readData(path, offset, length));
  }

  private async readData(path: string | NtfsEntry, offset: number, length: number): Promise<Uint8Array> {
    const entry = typeof path === 'string' ? await this.lookup(path) : path;
    if (entry.isDirectory) throw new FerryError('DISK_PATH_NOT_FOUND', `NTFS: ${entry.path} is a directory, not a file`);
    const data = (await this.streams(entry.record)).get(`${ATTR.DATA}:`);
    if (!data) return new Uint8Array(0);
    if (data.flags & (ATTR_FLAG_COMPRESSED | ATTR_FLAG_ENCRYPTED)) {
      const what = data.flags & ATTR_FLAG_ENCRYPTED ? 'encrypted' : 'compressed';
      throw new FerryError('DISK_FORMAT_UNSUPPORTED', `NTFS: ${entry.path} is ${what}; Ferry reads only plain and sparse NTFS files`);
    }
    return this.readStream(data, offset, length, entry.path);
  }

  private async entry(record: number, name: string, path: string): Promise<NtfsEntry> {
    const rec = await this.record(record);
    if (!(rec.flags & RECORD_IN_USE)) throw invalid(`MFT record ${record}`, `${path} names a record that is not in use`, this.recordOffset(record));
    const streams = await this.streams(record);
    const si = streams.get(`${ATTR.STANDARD_INFORMATION}:`);
    if (!si?.value) throw invalid(`MFT record ${record}`, `${path} has no resident $STANDARD_INFORMATION`, this.recordOffset(record));
    const info = parseStandardInformation(si.value, this.recordOffset(record));
    const data = streams.get(`${ATTR.DATA}:`);
    const isDirectory = (rec.flags & RECORD_DIRECTORY) !== 0;
    return {
      name,
      path,
      record,
      isDirectory,
      size: isDirectory || !data ? 0 : data.dataSize,
      allocatedSize: isDirectory || !data || data.value ? 0 : data.allocatedSize,
      ...info,
    };
  }

  private async findChild(dir: number, name: string): Promise<{ record: number; name: string } | undefined> {
    const entries = await this.indexEntries(dir);
    const exact = entries.find((e) => e.name === name);
    if (exact) return exact;
    const upper = name.toUpperCase();
    return entries.find((e) => e.name.toUpperCase() === upper);
  }

  /** Every name of a directory's $I30 index, walking its B-tree in order. */
  private async indexEntries(dir: number): Promise<{ record: number; name: string }[]> {
    const streams = await this.streams(dir);
    const root = streams.get(`${ATTR.INDEX_ROOT}:$I30`);
    if (!root?.value) throw invalid(`MFT record ${dir}`, 'directory without a resident $INDEX_ROOT:$I30', this.recordOffset(dir));
    const alloc = streams.get(`${ATTR.INDEX_ALLOCATION}:$I30`);
    const rootView = new DataView(root.value.buffer, root.value.byteOffset, root.value.byteLength);
    if (root.value.length < 0x20) throw invalid(`MFT record ${dir}`, '$INDEX_ROOT too short', this.recordOffset(dir));
    const blockSize = rootView.getUint32(8, true);
    if (blockSize < 512 || blockSize > 65536 || (blockSize & (blockSize - 1)) !== 0) throw invalid(`MFT record ${dir}`, `index block size ${blockSize}`, this.recordOffset(dir));
    const vcnSize = blockSize >= this.clusterSize ? this.clusterSize : 512;
    const out: { record: number; name: string }[] = [];
    const seen = new Set<number>();
    const walk = async (entries: IndexEntry[], depth: number): Promise<void> => {
      if (depth > MAX_DEPTH) throw invalid(`index of record ${dir}`, `B-tree deeper than ${MAX_DEPTH}`, this.recordOffset(dir));
      for (const e of entries) {
        if (e.child !== undefined) {
          if (!alloc) throw invalid(`index of record ${dir}`, 'an entry has a child node but there is no $INDEX_ALLOCATION', this.recordOffset(dir));
          if (seen.has(e.child)) throw invalid(`index of record ${dir}`, `index block VCN ${e.child} is reached twice`, this.recordOffset(dir));
          seen.add(e.child);
          const block = await this.readStream(alloc, e.child * vcnSize, blockSize, `index of record ${dir}`);
          if (block.length !== blockSize) throw invalid(`index of record ${dir}`, `index block VCN ${e.child} past $INDEX_ALLOCATION`, this.recordOffset(dir));
          const where = this.streamOffset(alloc, e.child * vcnSize);
          applyFixups(block, 'INDX', `index block VCN ${e.child} of record ${dir}`, where);
          await walk(parseIndexNode(block.subarray(0x18), `index block VCN ${e.child} of record ${dir}`, where + 0x18), depth + 1);
        }
        const fn = e.fileName;
        if (fn && fn.namespace !== NAMESPACE_DOS && fn.name !== '.') out.push({ record: e.record, name: fn.name });
      }
    };
    await walk(parseIndexNode(root.value.subarray(0x10), `$INDEX_ROOT of record ${dir}`, this.recordOffset(dir)), 0);
    return out;
  }

  /** The attributes of a file gathered over its base and extension records, keyed `type:name`. */
  private async streams(recordNumber: number): Promise<Map<string, Stream>> {
    const base = await this.record(recordNumber);
    let attrs: Attribute[] = base.attributes;
    const list = base.attributes.find((a) => a.type === ATTR.ATTRIBUTE_LIST);
    if (list) {
      const listStream = toStreams([list]).get(`${ATTR.ATTRIBUTE_LIST}:`)!;
      if (listStream.dataSize > MAX_ATTRIBUTE_LIST) throw invalid(`MFT record ${recordNumber}`, `$ATTRIBUTE_LIST of ${listStream.dataSize} bytes`, this.recordOffset(recordNumber));
      const bytes = listStream.value ?? (await this.readStream(listStream, 0, listStream.dataSize, `$ATTRIBUTE_LIST of record ${recordNumber}`));
      attrs = [];
      for (const e of parseAttributeList(bytes, this.recordOffset(recordNumber))) {
        const rec = e.record === recordNumber ? base : await this.record(e.record);
        if (rec.number !== recordNumber && rec.baseRecord !== recordNumber) {
          throw invalid(`MFT record ${e.record}`, `listed by record ${recordNumber}'s $ATTRIBUTE_LIST but belongs to record ${rec.baseRecord}`, this.recordOffset(e.record));
        }
        const a = rec.attributes.find((x) => x.type === e.type && x.id === e.id && x.name === e.name);
        if (!a) throw invalid(`MFT record ${e.record}`, `lacks attribute 0x${e.type.toString(16)} id ${e.id} that the $ATTRIBUTE_LIST names`, this.recordOffset(e.record));
        attrs.push(a);
      }
    }
    return toStreams(attrs);
  }

  private async record(n: number): Promise<MftRecord> {
    const hit = this.cache.get(n);
    if (hit) {
      this.cache.delete(n);
      this.cache.set(n, hit);
      return hit;
    }
    const at = this.recordOffset(n);
    const bytes = await this.readStream(this.mftStream(), n * this.boot.recordSize, this.boot.recordSize, `MFT record ${n}`);
    if (bytes.length !== this.boot.recordSize) throw invalid(`MFT record ${n}`, 'lies past the end of $MFT', at);
    const rec = parseMftRecord(bytes, n, at);
    this.cache.set(n, rec);
    if (this.cache.size > CACHE_RECORDS) this.cache.delete(this.cache.keys().next().value!);
    return rec;
  }

  private mftStream(): Stream {
    const clusters = this.mftRuns.reduce((n, r) => n + r.length, 0);
    const bytes = clusters * this.clusterSize;
    return { type: ATTR.DATA, name: '', flags: 0, runs: this.mftRuns, dataSize: bytes, initializedSize: bytes, allocatedSize: bytes };
  }

  private recordOffset(n: number): number {
    return this.streamOffset(this.mftStream(), n * this.boot.recordSize);
  }

  /** The volume offset of byte `pos` of a non-resident stream (-1 when sparse or unmapped: for messages only). */
  private streamOffset(s: Stream, pos: number): number {
    const cs = this.clusterSize;
    const vcn = Math.floor(pos / cs);
    const r = s.runs.find((x) => vcn >= x.vcn && vcn < x.vcn + x.length);
    return r?.lcn === undefined ? -1 : (r.lcn + vcn - r.vcn) * cs + (pos % cs);
  }

  /** Bytes `[offset, offset+length)` of a stream, cut at its data size; past the initialized size and in sparse runs: zeros. */
  private async readStream(s: Stream, offset: number, length: number, what: string): Promise<Uint8Array> {
    // A copy (`Buffer#slice` would share memory): the caller may change what it gets.
    if (s.value) return new Uint8Array(s.value.subarray(Math.min(offset, s.value.length), Math.min(offset + length, s.value.length)));
    const end = Math.min(offset + length, s.dataSize);
    if (end <= offset) return new Uint8Array(0);
    const out = new Uint8Array(end - offset);
    const cs = this.clusterSize;
    const initEnd = Math.min(end, s.initializedSize);
    const last = s.runs[s.runs.length - 1];
    if (initEnd > offset && (last ? (last.vcn + last.length) * cs : 0) < initEnd) {
      throw invalid(what, `bytes up to ${initEnd} are initialized but the data runs map only ${last ? (last.vcn + last.length) * cs : 0}`, -1);
    }
    for (const r of s.runs) {
      const runStart = r.vcn * cs;
      const from = Math.max(runStart, offset);
      const to = Math.min(runStart + r.length * cs, initEnd);
      if (from >= to || r.lcn === undefined) continue;
      const at = r.lcn * cs + (from - runStart);
      this.checkRange(at, to - from, what);
      out.set(await readExactly(this.read, at, to - from, what), from - offset);
    }
    return out;
  }

  private checkRange(at: number, length: number, what: string): void {
    if (at < 0 || at + length > this.size) throw invalid(what, `bytes ${at}-${at + length} lie outside the volume's ${this.size}`, at);
  }
}

/** Joins the pieces of each attribute (by type and name); non-resident pieces are ordered by VCN. */
function toStreams(attrs: Attribute[]): Map<string, Stream> {
  const out = new Map<string, Stream>();
  const sorted = [...attrs].sort((a, b) => (a.startVcn ?? 0) - (b.startVcn ?? 0));
  for (const a of sorted) {
    const key = `${a.type}:${a.name}`;
    const s = out.get(key);
    if (s) {
      s.runs.push(...(a.runs ?? []));
      continue;
    }
    out.set(key, {
      type: a.type,
      name: a.name,
      flags: a.flags,
      value: a.value,
      runs: [...(a.runs ?? [])],
      dataSize: a.value ? a.value.length : (a.dataSize ?? 0),
      initializedSize: a.value ? a.value.length : (a.initializedSize ?? 0),
      allocatedSize: a.value ? 0 : (a.allocatedSize ?? 0),
    });
  }
  return out;
}

function splitPath(path: string): string[] {
  return path.split(/[/\\]+/).filter((p) => p !== '' && p !== '.');
}

function joinPath(dir: string, name: string): string {
  return dir === '/' ? `/${name}` : `${dir}/${name}`;
}

/**
 * A field that points outside its structure makes a DataView or typed-array access throw
 * RangeError deep in the decoders: that is a malformed volume, not a bug, so it becomes
 * `DISK_FORMAT_INVALID` (every other check names its structure itself).
 */
async function malformed<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof RangeError) throw new FerryError('DISK_FORMAT_INVALID', `NTFS: a structure points outside itself (${err.message})`, {}, { cause: err });
    throw err;
  }
}
