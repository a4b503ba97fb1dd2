import { FerryError, isFerryError } from '../errors.js';
import { sha256 } from '../util/checksums.js';
import type { BlockMap } from './block-map.js';
import type { BlockStore } from './block-store.js';
import { packKey } from './pack-writer.js';
import { pointIdTime } from './point-id.js';
import type { RepositoryStorage } from './repository-storage.js';

const DAY_MS = 86_400_000;
/** A reused pack is extended to the point's date plus this, so daily backups extend it once a week. */
const EXTENSION_SLACK_MS = 7 * DAY_MS;
export const EXTENSIONS_PREFIX = 'retention/';

/** Next UTC midnight at or after `t`. */
function ceilDay(t: number): Date {
  return new Date(Math.ceil(t / DAY_MS) * DAY_MS);
}

/**
 * A restore point's retain-until date in a format 2 repository: its session start (from its id) plus
 * the immutability period, rounded up to the next UTC midnight. An id without a readable time gets
 * the end of representable time (never deletable by arithmetic).
 */
export function pointRetainUntil(pointId: string, days: number): Date {
  const t = pointIdTime(pointId);
  return t === undefined ? new Date(8.64e15) : ceilDay(t + days * DAY_MS);
}

/** `retention/<yyyy-mm-dd>/<id>`: which packs and index objects were extended to that day. */
interface ExtensionRecord {
  format: 'ferry-retention';
  version: 1;
  until: string;
  keys: string[];
}

/**
 * The retain-until dates a format 2 repository's objects have, as far as the core knows them (from
 * the extension records it and other processes wrote), and the extension of a point's objects
 * before its block maps are written (`docs/repository-format.md`, "Retain-until dates"). The
 * storage holds the real dates (`RepositoryBackend.retain`); this only decides what to extend.
 */
export class RetentionDates {
  private readonly known = new Map<string, number>();
  private loaded?: Promise<void>;

  constructor(private readonly backend: RepositoryStorage) {}

  /** Reads the extension records whose day has not passed (once). */
  load(): Promise<void> {
    this.loaded ??= (async () => {
      const today = ceilDay(Date.now() - DAY_MS).getTime();
      const keys: string[] = [];
      for await (const k of this.backend.list(EXTENSIONS_PREFIX)) keys.push(k);
      for (const key of keys) {
        const day = Date.parse(`${key.split('/')[1]}T00:00:00Z`);
        if (!(day >= today)) continue;
        try {
          const rec = JSON.parse(Buffer.from(await this.backend.get(key)).toString('utf8')) as ExtensionRecord;
          for (const k of rec.keys ?? []) this.note(k, new Date(day));
        } catch (err) {
          // A damaged record only costs an extension again; a missing passphrase or I/O failure stops.
          if (isFerryError(err) && !isFerryError(err, 'REPO_CORRUPT_OBJECT')) throw err;
          if (!isFerryError(err) && !(err instanceof SyntaxError)) throw err;
        }
      }
    })();
    return this.loaded;
  }

  /** The latest date known for `key`, if any. */
  get(key: string): Date | undefined {
    const t = this.known.get(key);
    return t === undefined ? undefined : new Date(t);
  }

  note(key: string, until: Date): void {
    if ((this.known.get(key) ?? 0) < until.getTime()) this.known.set(key, until.getTime());
  }

  /**
   * Before a point's block maps are written: every pack the maps need and every index object the
   * block store lists get a date no earlier than `until`; those known to end sooner are extended to
   * `until` plus 7 days, recorded in an extension record (itself retained to that day). Returns how
   * many objects were extended.
   */
  async extendForPoint(blocks: BlockStore, maps: BlockMap[], until: Date): Promise<number> {
    await this.load();
    const packs = new Set<string>();
    for (const map of maps) {
      for (let i = 0; i < map.blockCount; i++) {
        const h = map.get(i);
        if (!h) continue;
        const at = blocks.locate(h);
        if (!at) throw new FerryError('INTERNAL', `block ${Buffer.from(h).toString('hex')} of a point being committed is in no pack`);
        packs.add(packKey(at.pack));
      }
    }
    const due = [...packs, ...blocks.indexObjectKeys].filter((k) => (this.known.get(k) ?? 0) < until.getTime());
    if (due.length === 0) return 0;
    const to = ceilDay(until.getTime() + EXTENSION_SLACK_MS);
    await this.backend.retainObjects(due, to);
    const record: ExtensionRecord = { format: 'ferry-retention', version: 1, until: to.toISOString(), keys: due.sort() };
    const bytes = Buffer.from(JSON.stringify(record) + '\n');
    const key = `${EXTENSIONS_PREFIX}${to.toISOString().slice(0, 10)}/${sha256(bytes).toString('hex')}`;
    if (await this.backend.putIfAbsent(key, bytes)) await this.backend.retainObjects([key], to);
    for (const k of due) this.note(k, to);
    return due.length;
  }
}
