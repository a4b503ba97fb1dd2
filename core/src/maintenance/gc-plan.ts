import type { RepositoryBackend } from '../contracts/repository-backend.js';
import type { DamageIndex } from '../repository/damaged-blocks.js';
import { decodeIndex, packFileSize, type PackEntry } from '../repository/pack.js';
import { packIdOf } from '../repository/pack-writer.js';
import { readBatches, type StoredBatch } from './gc-protocol.js';

/** A pack as its index object describes it. */
export interface PackInfo {
  id: string;
  entries: PackEntry[];
  /** Size of the pack file, from its entries (the format fixes header and trailer sizes). */
  size: number;
  indexBytes: Uint8Array;
}

/** What garbage collection finds in the repository before it decides anything. */
export interface PackState {
  /** Packs with an index object (what sessions deduplicate against). */
  live: Map<string, PackInfo>;
  /** Packs whose index object cannot be read: left alone, since what they hold is unknown. */
  unreadable: string[];
  /** Pack ids with a condemned index copy in `gc/condemned/`. */
  condemned: Set<string>;
  /** Pack ids that have a pack file. */
  files: Set<string>;
  batches: StoredBatch[];
  /** Batch objects that cannot be read (their packs are adopted or found again as orphans). */
  brokenBatches: string[];
}

export interface GcPlan {
  /** Live packs no restore point needs anything from. */
  unused: PackInfo[];
  /** Partly used packs whose unused share reaches the threshold: their used blocks move to new packs. */
  rewrite: { pack: PackInfo; keep: PackEntry[] }[];
  partlyUsedKept: number;
  wasteBytesLeft: number;
  /** Pack files with neither an index object nor a condemned copy (a session killed between the two puts). */
  orphans: string[];
  /** Condemned copies that no batch names (gc killed between condemning and recording). */
  adopt: string[];
  /** Condemned copies whose index object exists again: leftovers to delete. */
  strayCopies: string[];
}

const packSize = packFileSize;

/** Reads every index object, condemned copy, pack name and pending batch. */
export async function loadPackState(backend: RepositoryBackend): Promise<PackState> {
  const state: PackState = { live: new Map(), unreadable: [], condemned: new Set(), files: new Set(), batches: [], brokenBatches: [] };
  const indexKeys: string[] = [];
  for await (const k of backend.list('index/')) indexKeys.push(k);
  for (let i = 0; i < indexKeys.length; i += 16) {
    await Promise.all(
      indexKeys.slice(i, i + 16).map(async (k) => {
        const id = packIdOf(k);
        try {
          const bytes = await backend.get(k);
          const { entries } = decodeIndex(bytes, k);
          state.live.set(id, { id, entries, size: packSize(entries), indexBytes: bytes });
        } catch {
          state.unreadable.push(id);
        }
      }),
    );
  }
  for await (const k of backend.list('gc/condemned/')) state.condemned.add(packIdOf(k));
  for await (const k of backend.list('packs/')) state.files.add(packIdOf(k));
  const { readable, broken } = await readBatches(backend);
  state.batches = readable;
  state.brokenBatches = broken;
  return state;
}

/**
 * Decides what to collect (pure: no I/O). Each needed hash keeps exactly one copy: an undamaged one
 * when there is one, preferably in the pack that holds the most needed blocks, so duplicate copies
 * (racing sessions, healed blocks) become waste. A pack whose kept blocks include a damaged copy is
 * never rewritten: moving it would hide the damage from the damaged-blocks list.
 */
export function planCollection(state: PackState, referenced: Set<string>, damaged: DamageIndex, maxWaste: number): GcPlan {
  const pending = new Set(state.batches.flatMap((b) => b.batch.packs.map((p) => p.id)));
  const packs = [...state.live.values()].filter((p) => !pending.has(p.id));
  // A copy in a pack whose file is gone counts as damaged, so a readable copy always wins.
  const isDamaged = (hex: string, pack: string): boolean => !state.files.has(pack) || (damaged.get(hex)?.has(pack) ?? false);
  const score = new Map<string, number>();
  for (const p of packs) score.set(p.id, p.entries.filter((e) => referenced.has(e.hash.toString('hex'))).length);
  const chosen = new Map<string, string>();
  for (const p of packs) {
    for (const e of p.entries) {
      const hex = e.hash.toString('hex');
      if (!referenced.has(hex)) continue;
      const cur = chosen.get(hex);
      if (cur === undefined || better(p.id, cur, isDamaged(hex, p.id), isDamaged(hex, cur), score)) chosen.set(hex, p.id);
    }
  }
  const plan: GcPlan = { unused: [], rewrite: [], partlyUsedKept: 0, wasteBytesLeft: 0, orphans: [], adopt: [], strayCopies: [] };
  for (const p of packs) {
    const keep = p.entries.filter((e) => chosen.get(e.hash.toString('hex')) === p.id);
    if (keep.length === 0) plan.unused.push(p);
    else if (keep.length < p.entries.length) {
      const dead = p.size - packSize(keep);
      const keepsDamage = keep.some((e) => isDamaged(e.hash.toString('hex'), p.id));
      if (dead / p.size >= maxWaste && !keepsDamage) plan.rewrite.push({ pack: p, keep });
      else {
        plan.partlyUsedKept++;
        plan.wasteBytesLeft += dead;
      }
    }
  }
  const unreadable = new Set(state.unreadable);
  for (const id of state.files) {
    if (!state.live.has(id) && !state.condemned.has(id) && !pending.has(id) && !unreadable.has(id)) plan.orphans.push(id);
  }
  for (const id of state.condemned) {
    if (state.live.has(id)) {
      if (!pending.has(id)) plan.strayCopies.push(id);
    } else if (!pending.has(id)) plan.adopt.push(id);
  }
  return plan;
}

function better(a: string, b: string, aDamaged: boolean, bDamaged: boolean, score: Map<string, number>): boolean {
  if (aDamaged !== bDamaged) return !aDamaged;
  const sa = score.get(a) ?? 0;
  const sb = score.get(b) ?? 0;
  return sa !== sb ? sa > sb : a < b;
}
