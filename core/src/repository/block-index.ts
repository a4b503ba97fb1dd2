import { FerryError } from '../errors.js';

/** Where one stored copy of a block is. */
export interface IndexedLocation {
  pack: string;
  offset: number;
  length: number;
}

/**
 * Bytes per entry of the sorted run: hash bytes 2..31 (30), pack number (3), offset (4), length (3).
 * The first two hash bytes are implied by the prefix table (`docs/repository-format.md`, "The index
 * in memory").
 */
export const RUN_ENTRY = 40;
const SUFFIX = 30;
const PREFIXES = 65536;
/** Pack number that says "the real location is in the overflow table". */
const OVERFLOW = 0xffffff;
const MAX24 = 0xffffff;
/** Staging records while building: the whole hash (32), pack (3), offset (4), length (3). */
const STAGE = 42;
const STAGE_CHUNK = 1 << 16;
/** Delta slots: hash (32), pack number + 1 (4, 0 = empty), offset (4), length (4). */
const SLOT = 44;
const MIN_MERGE = 65536;

/**
 * The block index of an open repository: block hash → pack, offset, length, in about 40 bytes per
 * block including the hash, with lookups that never allocate on the hot path.
 *
 * - A sorted run (`run`, 40-byte entries) with a prefix table of the hashes' first two bytes: a lookup
 *   is one table read and a binary search over the entries of that prefix.
 * - A delta of entries added since the run was built (new packs of this session): an open-addressing
 *   table merged into the run once it reaches a quarter of the run's size, so memory stays near 40
 *   bytes per block and the merges cost O(n) amortised per added block.
 * - Packs are numbered in `packs`; the few locations whose fields do not fit the run's widths are
 *   kept whole in `overflow`.
 *
 * Two copies of one hash: the first kept wins unless `prefer(hash, kept pack, new pack)` says otherwise.
 */
export class BlockIndex {
  private packs: string[] = [];
  /** Pack id → number; built on first use after `importRun` (a warm open needs no lookups by id). */
  private numbers?: Map<string, number> = new Map();
  private gone = new Uint8Array(64);
  private run: Uint8Array = new Uint8Array(0);
  private runSize = 0;
  private readonly prefix = new Uint32Array(PREFIXES + 1);
  private readonly overflow = new Map<string, IndexedLocation>();
  private slots: Uint8Array = new Uint8Array(0);
  private slotView = new DataView(this.slots.buffer);
  private deltaSize = 0;
  private staging: Uint8Array[] = [];
  private staged = 0;

  constructor(
    /** Whether a second copy of `hash` (pack `candidate`) should replace the kept one (pack `kept`). */
    private readonly prefer: (hash: Uint8Array, kept: number, candidate: number) => boolean = () => false,
  ) {}

  /** Number of distinct hashes indexed. */
  get size(): number {
    return this.runSize + this.deltaSize + this.staged;
  }

  /** Bytes held by the index's typed arrays (for the bench and reports). */
  get bytes(): number {
    return this.run.byteLength + this.slots.byteLength + this.prefix.byteLength + this.gone.byteLength + this.staging.length * STAGE_CHUNK * STAGE;
  }

  /** The number of a pack id, made on first use. */
  packNumber(id: string): number {
    let n = this.packNumbers.get(id);
    if (n === undefined) {
      n = this.packs.length;
      this.packs.push(id);
      this.packNumbers.set(id, n);
      this.growGone(n);
    }
    return n;
  }

  private get packNumbers(): Map<string, number> {
    return (this.numbers ??= new Map(this.packs.map((id, n) => [id, n])));
  }

  /** Room in the gone flags for pack number `n`. */
  private growGone(n: number): void {
    if (n < this.gone.length) return;
    let size = this.gone.length;
    while (size <= n) size *= 2;
    const g = new Uint8Array(size);
    g.set(this.gone);
    this.gone = g;
  }

  packId(n: number): string {
    return this.packs[n];
  }

  /** Marks a pack whose file is missing: its copies are not good copies (`isGone`). */
  markGone(n: number): void {
    this.gone[n] = 1;
  }

  isGone(n: number): boolean {
    return this.gone[n] === 1;
  }

  /** Whether a pack id has a number and its file is known to be missing. */
  isPackGone(id: string): boolean {
    const n = this.packNumbers.get(id);
    return n !== undefined && this.gone[n] === 1;
  }

  /**
   * Bulk loading (opening a repository): entries are staged and sorted once by `finishLoad`;
   * lookups before then see only what was indexed before. Order of staging decides ties as `add`
   * would (the first staged copy is the kept one unless `prefer` says otherwise).
   */
  stage(hash: Uint8Array, pack: number, offset: number, length: number): void {
    const at = this.staged % STAGE_CHUNK;
    if (at === 0) this.staging.push(new Uint8Array(STAGE_CHUNK * STAGE));
    const chunk = this.staging[this.staging.length - 1];
    const o = at * STAGE;
    chunk.set(hash.subarray(0, 32), o);
    writeLocation(chunk, o + 32, pack, offset, length, () => this.overflow.set(hex(hash), { pack: this.packs[pack], offset, length }));
    this.staged++;
  }

  /** Sorts what was staged and merges it with the run (and the delta). */
  finishLoad(): void {
    if (this.staged === 0 && this.deltaSize === 0) return;
    this.drainDeltaIntoStaging();
    const built = this.sortStaged();
    this.mergeIntoRun(built.rec, built.count);
  }

  /** Adds one copy (a pack just stored). Duplicates follow the `prefer` rule. */
  add(hash: Uint8Array, pack: number, offset: number, length: number): void {
    const inRun = this.findInRun(hash);
    if (inRun >= 0) {
      const kept = this.runPack(inRun, hash);
      if (!this.prefer(hash, kept, pack)) return;
      this.overflow.delete(hex(hash));
      writeLocation(this.run, inRun * RUN_ENTRY + SUFFIX, pack, offset, length, () => this.overflow.set(hex(hash), { pack: this.packs[pack], offset, length }));
      return;
    }
    this.putDelta(hash, pack, offset, length);
    if (this.deltaSize >= Math.max(MIN_MERGE, this.runSize / 4)) this.finishLoad();
  }

  /** The pack number holding `hash`, or -1. No allocation. */
  packOf(hash: Uint8Array): number {
    const s = this.findSlot(hash);
    if (s >= 0 && this.slotView.getUint32(s * SLOT + 32, true) !== 0) return this.slotView.getUint32(s * SLOT + 32, true) - 1;
    const i = this.findInRun(hash);
    return i < 0 ? -1 : this.runPack(i, hash);
  }

  get(hash: Uint8Array): IndexedLocation | undefined {
    const s = this.findSlot(hash);
    if (s >= 0 && this.slotView.getUint32(s * SLOT + 32, true) !== 0) {
      const o = s * SLOT;
      return { pack: this.packs[this.slotView.getUint32(o + 32, true) - 1], offset: this.slotView.getUint32(o + 36, true), length: this.slotView.getUint32(o + 40, true) };
    }
    const i = this.findInRun(hash);
    if (i < 0) return undefined;
    const o = i * RUN_ENTRY + SUFFIX;
    const pack = read24(this.run, o);
    if (pack === OVERFLOW) return this.overflow.get(hex(hash));
    return { pack: this.packs[pack], offset: readU32(this.run, o + 3), length: read24(this.run, o + 7) };
  }

  private runPack(i: number, hash: Uint8Array): number {
    const p = read24(this.run, i * RUN_ENTRY + SUFFIX);
    return p === OVERFLOW ? this.packNumbers.get(this.overflow.get(hex(hash))!.pack)! : p;
  }

  /** Index of `hash` in the run, or -1: binary search in the slice of its two-byte prefix. */
  private findInRun(hash: Uint8Array): number {
    const p = (hash[0] << 8) | hash[1];
    let lo = this.prefix[p];
    let hi = this.prefix[p + 1] - 1;
    const run = this.run;
    while (lo <= hi) {
      const mid = (lo + hi) >>> 1;
      const base = mid * RUN_ENTRY;
      let c = 0;
      for (let k = 0; k < SUFFIX; k++) {
        c = run[base + k] - hash[k + 2];
        if (c !== 0) break;
      }
      if (c === 0) return mid;
      if (c < 0) lo = mid + 1;
      else hi = mid - 1;
    }
    return -1;
  }

  /** The delta slot holding `hash`, or the empty slot where it would go; -1 without a table. */
  private findSlot(hash: Uint8Array): number {
    if (this.slots.length === 0) return -1;
    const mask = this.slots.length / SLOT - 1;
    let s = ((hash[0] << 24) | (hash[1] << 16) | (hash[2] << 8) | hash[3]) & mask;
    for (;;) {
      const o = s * SLOT;
      if (this.slotView.getUint32(o + 32, true) === 0) return s;
      let same = true;
      for (let k = 0; k < 32; k++) {
        if (this.slots[o + k] !== hash[k]) {
          same = false;
          break;
        }
      }
      if (same) return s;
      s = (s + 1) & mask;
    }
  }

  private putDelta(hash: Uint8Array, pack: number, offset: number, length: number): void {
    if ((this.deltaSize + 1) * 2 > this.slots.length / SLOT) this.growDelta();
    const s = this.findSlot(hash);
    const o = s * SLOT;
    if (this.slotView.getUint32(o + 32, true) !== 0) {
      if (!this.prefer(hash, this.slotView.getUint32(o + 32, true) - 1, pack)) return;
    } else {
      this.deltaSize++;
    }
    this.slots.set(hash.subarray(0, 32), o);
    this.slotView.setUint32(o + 32, pack + 1, true);
    this.slotView.setUint32(o + 36, offset, true);
    this.slotView.setUint32(o + 40, length, true);
    if (offset > 0xffffffff) throw new FerryError('INTERNAL', `offset ${offset} beyond 4 GiB in one pack`);
  }

  private growDelta(): void {
    const old = this.slots;
    const capacity = Math.max(1024, (old.length / SLOT) * 2);
    this.slots = new Uint8Array(capacity * SLOT);
    this.slotView = new DataView(this.slots.buffer);
    this.deltaSize = 0;
    const oldView = new DataView(old.buffer);
    for (let o = 0; o < old.length; o += SLOT) {
      const p = oldView.getUint32(o + 32, true);
      if (p !== 0) this.putDelta(old.subarray(o, o + 32), p - 1, oldView.getUint32(o + 36, true), oldView.getUint32(o + 40, true));
    }
  }

  /** Moves the delta's entries to the staging chunks (they are merged with it). */
  private drainDeltaIntoStaging(): void {
    const view = this.slotView;
    for (let o = 0; o < this.slots.length; o += SLOT) {
      const p = view.getUint32(o + 32, true);
      if (p !== 0) this.stage(this.slots.subarray(o, o + 32), p - 1, view.getUint32(o + 36, true), view.getUint32(o + 40, true));
    }
    this.slots = new Uint8Array(0);
    this.slotView = new DataView(this.slots.buffer);
    this.deltaSize = 0;
  }

  /**
   * The staged records as a sorted run (duplicates resolved), freeing the staging chunks: a counting
   * sort on the first two bytes, then per prefix a counting sort on the third byte and an insertion
   * sort of the (tiny) groups that share it. Linear in the entries.
   */
  private sortStaged(): { rec: Uint8Array; count: number } {
    const n = this.staged;
    const counts = new Uint32Array(PREFIXES + 1);
    const chunks = this.staging;
    for (let i = 0; i < n; i++) {
      const c = chunks[(i / STAGE_CHUNK) | 0];
      const o = (i % STAGE_CHUNK) * STAGE;
      counts[((c[o] << 8) | c[o + 1]) + 1]++;
    }
    for (let p = 0; p < PREFIXES; p++) counts[p + 1] += counts[p];
    const starts = counts.slice();
    // Placed in staging order within a prefix: the later in-place sorts are stable, so ties keep it.
    const out = new Uint8Array(n * STAGE);
    for (let i = 0; i < n; i++) {
      const c = chunks[(i / STAGE_CHUNK) | 0];
      const o = (i % STAGE_CHUNK) * STAGE;
      const p = (c[o] << 8) | c[o + 1];
      copy(out, starts[p]++ * STAGE, c, o, STAGE);
    }
    this.staging = [];
    this.staged = 0;
    sortSlices(out, counts, STAGE, 2);
    // Compact to 40-byte entries (dropping the prefix), resolving duplicates; the prefix table of the
    // result is rebuilt from the kept entries.
    let w = 0;
    for (let i = 0; i < n; i++) {
      const o = i * STAGE;
      if (w > 0 && equalStaged(out, (w - 1) * STAGE, o)) {
        const keptPack = read24(out, (w - 1) * STAGE + 32);
        if (keptPack !== OVERFLOW && read24(out, o + 32) !== OVERFLOW && this.prefer(out.subarray(o, o + 32), keptPack, read24(out, o + 32))) out.copyWithin((w - 1) * STAGE + 32, o + 32, o + STAGE);
        continue;
      }
      if (w !== i) out.copyWithin(w * STAGE, o, o + STAGE);
      w++;
    }
    return { rec: out, count: w };
  }

  /** Merges a sorted staged run (42-byte records, full hash) with the run into a new run. */
  private mergeIntoRun(staged: Uint8Array, m: number): void {
    const n = this.runSize;
    const old = this.run;
    const oldPrefix = this.prefix.slice();
    const out = new Uint8Array((n + m) * RUN_ENTRY);
    const counts = new Uint32Array(PREFIXES + 1);
    let i = 0;
    let j = 0;
    let w = 0;
    let p = 0;
    while (i < n || j < m) {
      // The old run's entry i has prefix p: advance p to the slice that holds i.
      while (i < n && oldPrefix[p + 1] <= i) p++;
      let takeOld: boolean;
      let dup = false;
      if (i >= n) takeOld = false;
      else if (j >= m) takeOld = true;
      else {
        const c = compareRunStaged(old, i, p, staged, j);
        takeOld = c <= 0;
        dup = c === 0;
      }
      if (dup) {
        // Same hash in both: the run's copy was indexed first.
        const so = j * STAGE;
        const kept = read24(old, i * RUN_ENTRY + SUFFIX);
        const cand = read24(staged, so + 32);
        const useNew = kept !== OVERFLOW && cand !== OVERFLOW && this.prefer(staged.subarray(so, so + 32), kept, cand);
        if (useNew) copy(out, w * RUN_ENTRY, staged, so + 2, RUN_ENTRY);
        else copy(out, w * RUN_ENTRY, old, i * RUN_ENTRY, RUN_ENTRY);
        counts[p + 1]++;
        i++;
        j++;
        w++;
        continue;
      }
      if (takeOld) {
        copy(out, w * RUN_ENTRY, old, i * RUN_ENTRY, RUN_ENTRY);
        counts[p + 1]++;
        i++;
      } else {
        const so = j * STAGE;
        copy(out, w * RUN_ENTRY, staged, so + 2, RUN_ENTRY);
        counts[((staged[so] << 8) | staged[so + 1]) + 1]++;
        j++;
      }
      w++;
    }
    for (let q = 0; q < PREFIXES; q++) counts[q + 1] += counts[q];
    this.prefix.set(counts);
    this.run = w === n + m ? out : out.slice(0, w * RUN_ENTRY);
    this.runSize = w;
  }

  /**
   * The run and its tables as bytes (the local cache's snapshot), and back. The overflow table and
   * gone marks are not part of it: callers rebuild the index when `overflowCount` is not zero.
   */
  exportRun(): { run: Uint8Array; prefix: Uint32Array; packs: string[] } {
    this.finishLoad();
    return { run: this.run.subarray(0, this.runSize * RUN_ENTRY), prefix: this.prefix, packs: this.packs };
  }

  get overflowCount(): number {
    return this.overflow.size;
  }

  /** Replaces the contents with a run made by `exportRun` (the caller checked its integrity). */
  importRun(run: Uint8Array, prefix: Uint32Array, packs: string[]): void {
    if (this.size !== 0 || this.packs.length !== 0) throw new FerryError('INTERNAL', 'BlockIndex.importRun into a non-empty index');
    if (prefix.length !== PREFIXES + 1 || prefix[PREFIXES] * RUN_ENTRY !== run.length) throw new FerryError('INTERNAL', 'BlockIndex.importRun: inconsistent tables');
    this.packs = packs;
    this.numbers = undefined;
    this.growGone(packs.length);
    this.run = run;
    this.runSize = prefix[PREFIXES];
    this.prefix.set(prefix);
  }
}

function hex(hash: Uint8Array): string {
  return Buffer.from(hash.buffer, hash.byteOffset, 32).toString('hex');
}

/** A short copy between arrays without making a view per call (hot loops of 40-byte records). */
function copy(dst: Uint8Array, at: number, src: Uint8Array, from: number, n: number): void {
  for (let k = 0; k < n; k++) dst[at + k] = src[from + k];
}

function read24(b: Uint8Array, o: number): number {
  return b[o] | (b[o + 1] << 8) | (b[o + 2] << 16);
}

function readU32(b: Uint8Array, o: number): number {
  return (b[o] | (b[o + 1] << 8) | (b[o + 2] << 16)) + b[o + 3] * 0x1000000;
}

/** pack (3), offset (4), length (3) at `o`; values that do not fit mark the entry as overflowed. */
function writeLocation(b: Uint8Array, o: number, pack: number, offset: number, length: number, onOverflow: () => void): void {
  if (pack >= MAX24 || length > MAX24 || offset > 0xffffffff) {
    onOverflow();
    pack = OVERFLOW;
    offset = 0;
    length = 0;
  }
  b[o] = pack & 0xff;
  b[o + 1] = (pack >> 8) & 0xff;
  b[o + 2] = pack >>> 16;
  b[o + 3] = offset & 0xff;
  b[o + 4] = (offset >>> 8) & 0xff;
  b[o + 5] = (offset >>> 16) & 0xff;
  b[o + 6] = (offset / 0x1000000) & 0xff;
  b[o + 7] = length & 0xff;
  b[o + 8] = (length >> 8) & 0xff;
  b[o + 9] = length >>> 16;
}

function equalStaged(b: Uint8Array, x: number, y: number): boolean {
  for (let k = 0; k < 32; k++) if (b[x + k] !== b[y + k]) return false;
  return true;
}

/** Run entry `i` (prefix `p`) against staged record `j` by hash. */
function compareRunStaged(run: Uint8Array, i: number, p: number, staged: Uint8Array, j: number): number {
  const so = j * STAGE;
  const sp = (staged[so] << 8) | staged[so + 1];
  if (p !== sp) return p - sp;
  const ro = i * RUN_ENTRY;
  for (let k = 0; k < SUFFIX; k++) {
    const c = run[ro + k] - staged[so + 2 + k];
    if (c !== 0) return c;
  }
  return 0;
}

/**
 * Sorts each slice `[bounds[p], bounds[p+1])` of `size`-byte records (already grouped by their first
 * `from` bytes) by the rest of the hash: a stable counting sort on byte `from`, then a stable
 * insertion sort of records sharing it (few: the hashes are uniform).
 */
function sortSlices(b: Uint8Array, bounds: Uint32Array, size: number, from: number): void {
  let buf = new Uint8Array(size * 4096);
  const cnt = new Uint32Array(257);
  const rec = new Uint8Array(size);
  for (let p = 0; p + 1 < bounds.length; p++) {
    const lo = bounds[p];
    const len = bounds[p + 1] - lo;
    if (len < 2) continue;
    if (len * size > buf.length) buf = new Uint8Array(len * size);
    cnt.fill(0);
    for (let i = 0; i < len; i++) cnt[b[(lo + i) * size + from] + 1]++;
    for (let k = 0; k < 256; k++) cnt[k + 1] += cnt[k];
    const pos = cnt.slice(0, 256);
    for (let i = 0; i < len; i++) {
      const o = (lo + i) * size;
      copy(buf, pos[b[o + from]]++ * size, b, o, size);
    }
    b.set(buf.subarray(0, len * size), lo * size);
    for (let k = 0; k < 256; k++) {
      const s = lo + cnt[k];
      const e = lo + cnt[k + 1];
      if (e - s > 32) {
        sortGroup(b, s, e, size, from + 1);
        continue;
      }
      for (let i = s + 1; i < e; i++) {
        rec.set(b.subarray(i * size, (i + 1) * size));
        let j = i - 1;
        while (j >= s && compareFrom(b, j * size, rec, from + 1) > 0) {
          b.copyWithin((j + 1) * size, j * size, (j + 1) * size);
          j--;
        }
        b.set(rec, (j + 1) * size);
      }
    }
  }
}

function compareFrom(b: Uint8Array, o: number, rec: Uint8Array, from: number): number {
  for (let k = from; k < 32; k++) {
    const c = b[o + k] - rec[k];
    if (c !== 0) return c;
  }
  return 0;
}

/** A large group of records sharing their first bytes (not expected of hashes): a comparison sort. */
function sortGroup(b: Uint8Array, s: number, e: number, size: number, from: number): void {
  const order = Array.from({ length: e - s }, (_, i) => s + i);
  order.sort((x, y) => {
    for (let k = from; k < 32; k++) {
      const c = b[x * size + k] - b[y * size + k];
      if (c !== 0) return c;
    }
    return x - y;
  });
  const copy = b.slice(s * size, e * size);
  order.forEach((from_, i) => b.set(copy.subarray((from_ - s) * size, (from_ - s + 1) * size), (s + i) * size));
}
