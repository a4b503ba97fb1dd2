/**
 * Block ids a session has met already, in memory the block threads share with the main thread: a
 * table of `SEEN_ENTRIES` ids of 32 bytes, one place per id chosen by its leading bits, where a new
 * id overwrites whatever held its place. Lossy by design: an id missing (never noted, or pushed out)
 * only means the block is compressed as it would be without the table; an id found is a hint that
 * the main thread checks against the repository (`SourceMover`) before it trusts it. Written by the
 * main thread only; a thread that reads a place while it is being written sees a mix of two ids,
 * which matches neither and is a miss.
 */
export const SEEN_ENTRIES = 16384;
const ID = 32;

export function newSeenTable(): SharedArrayBuffer {
  return new SharedArrayBuffer(SEEN_ENTRIES * ID);
}

function place(id: Uint8Array): number {
  return (((id[0]! << 8) | id[1]!) & (SEEN_ENTRIES - 1)) * ID;
}

export function noteSeen(table: Uint8Array, id: Uint8Array): void {
  if (id.length !== ID) return;
  table.set(id, place(id));
}

export function wasSeen(table: Uint8Array, id: Uint8Array): boolean {
  if (id.length !== ID) return false;
  const at = place(id);
  for (let i = 0; i < ID; i++) if (table[at + i] !== id[i]) return false;
  return true;
}
