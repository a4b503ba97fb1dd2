import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import type { BlockCodec } from '../repository/block-codec.js';
import type { BlockLocation } from '../repository/block-store.js';
import type { DamageReason } from '../repository/damaged-blocks.js';
import { packKey } from '../repository/pack-writer.js';
import type { RepositoryCipher } from '../repository/repository-cipher.js';

/** One stored copy that failed its check, or a needed hash with no copy at all (`pack: null`). */
export interface BlockFinding {
  hash: string;
  pack: string | null;
  offset: number | null;
  reason: DamageReason;
  detail: string;
}

export interface CheckCounters {
  checked: number;
  ok: number;
  /** Encoded bytes read from packs. */
  bytesRead: number;
  /** Raw bytes that decompressed and matched their SHA-256. */
  rawBytes: number;
}

export interface BlockToCheck {
  hash: string;
  at: BlockLocation;
}

export interface CheckOptions {
  /** Packs read at once (each read is at most one pack's span, ~16 MiB). */
  packsInFlight?: number;
  /** Blocks decoded at once per pack; the codec spreads them over its worker threads. */
  decodesInFlight?: number;
  onProgress?: (counters: CheckCounters) => void;
  /** Encrypted repositories: each record is opened (AES-256-GCM tag checked) before decoding. */
  cipher?: RepositoryCipher;
}

/**
 * Reads blocks out of their packs and checks each one completely: CRC-32 of the stored object,
 * decompression, and SHA-256 of the content against the hash the block maps name (the codec does
 * both on its worker threads). A pack is read as one range when the blocks asked for fill most of
 * it; a failing range read is retried block by block, so a truncated or partly unreadable pack still
 * yields every block that can be read, and one bad pack never stops the scan.
 */
export async function checkBlocks(
  backend: RepositoryBackend,
  codec: BlockCodec,
  byPack: Map<string, BlockToCheck[]>,
  opts: CheckOptions = {},
): Promise<{ findings: BlockFinding[]; counters: CheckCounters }> {
  const findings: BlockFinding[] = [];
  const counters: CheckCounters = { checked: 0, ok: 0, bytesRead: 0, rawBytes: 0 };
  const packs = [...byPack.entries()];
  let next = 0;
  const reader = async (): Promise<void> => {
    while (next < packs.length) {
      const [pack, blocks] = packs[next++];
      blocks.sort((a, b) => a.at.offset - b.at.offset);
      await checkPack(backend, codec, pack, blocks, { findings, counters, cipher: opts.cipher }, opts.decodesInFlight ?? 16);
      opts.onProgress?.(counters);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.packsInFlight ?? 2) }, reader));
  return { findings, counters };
}

interface Sink {
  findings: BlockFinding[];
  counters: CheckCounters;
  cipher?: RepositoryCipher;
}

async function checkPack(backend: RepositoryBackend, codec: BlockCodec, pack: string, blocks: BlockToCheck[], sink: Sink, width: number): Promise<void> {
  const key = packKey(pack);
  const start = blocks[0].at.offset;
  const end = Math.max(...blocks.map((b) => b.at.offset + b.at.length));
  const wanted = blocks.reduce((n, b) => n + b.at.length, 0);
  let span: Uint8Array | undefined;
  if (wanted >= (end - start) / 2) {
    try {
      span = await readRange(backend, key, start, end - start);
    } catch (err) {
      if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) {
        for (const b of blocks) fail(sink, b, pack, 'pack-missing', err.message);
        return;
      }
      // Damaged somewhere in the span: fall back to block-by-block reads to find exactly where.
    }
  }
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < blocks.length) {
      const b = blocks[next++];
      await checkOne(backend, codec, key, b, span && span.subarray(b.at.offset - start, b.at.offset - start + b.at.length), sink);
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, blocks.length) }, worker));
}

async function checkOne(backend: RepositoryBackend, codec: BlockCodec, key: string, b: BlockToCheck, have: Uint8Array | undefined, sink: Sink): Promise<void> {
  const object = `${key}@${b.at.offset} (block ${b.hash})`;
  sink.counters.checked++;
  try {
    const encoded = have ?? (await readRange(backend, key, b.at.offset, b.at.length));
    sink.counters.bytesRead += encoded.length;
    if (encoded.length !== b.at.length) throw new FerryError('REPO_CORRUPT_OBJECT', 'pack is shorter than its index says', { object });
    const id = Buffer.from(b.hash, 'hex');
    const raw = await codec.decode(sink.cipher ? await sink.cipher.openBlockAsync(id, encoded, object) : encoded, id, object);
    sink.counters.ok++;
    sink.counters.rawBytes += raw.length;
  } catch (err) {
    fail(sink, b, b.at.pack, classify(err), err instanceof Error ? err.message : String(err));
  }
}

function fail(sink: Sink, b: BlockToCheck, pack: string, reason: DamageReason, detail: string): void {
  sink.findings.push({ hash: b.hash, pack, offset: b.at.offset, reason, detail });
}

async function readRange(backend: RepositoryBackend, key: string, offset: number, length: number): Promise<Uint8Array> {
  if (backend.getRange) return backend.getRange(key, offset, length);
  const all = await backend.get(key);
  if (all.length < offset + length) throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + length} bytes`, { object: key });
  return all.subarray(offset, offset + length);
}

/** What kind of damage an error means, from its code and the checks' wording. */
export function classify(err: unknown): DamageReason {
  if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) return 'pack-missing';
  if (!isFerryError(err, 'REPO_CORRUPT_OBJECT')) return 'unreadable';
  const d = err.detail;
  if (/shorter/.test(d)) return 'truncated';
  if (/CRC-32/.test(d)) return 'crc';
  if (/AES-256-GCM/.test(d)) return 'auth';
  if (/SHA-256/.test(d)) return 'sha256';
  return 'malformed';
}
