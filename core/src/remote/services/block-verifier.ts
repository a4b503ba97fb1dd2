import { FerryError, type ErrorLocation } from '../../errors.js';
import type { BlockCodec } from '../../repository/block-codec.js';

/** Blocks being checked at once per disk: enough to keep the worker threads busy, bounded in memory. */
const IN_FLIGHT_BYTES = 8 * 1024 * 1024;

/**
 * The repository service's check of what a proxy sends: a new block must decode to exactly the id
 * (SHA-256, or HMAC-SHA256 under an encrypted repository's id key) the proxy names for it. Without
 * it a faulty or hostile proxy could store any data under another block's id, and every later
 * backup of any VM that has that block would dedup against the wrong data. The decode and hash run
 * on the codec's worker threads, into reused block slots, a few blocks at a time.
 */
export class BlockVerifier {
  private running = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly limit: number;

  constructor(
    private readonly codec: BlockCodec,
    private readonly blockSize: number,
  ) {
    this.limit = Math.min(8, Math.max(2, Math.floor(IN_FLIGHT_BYTES / blockSize)));
  }

  /**
   * Resolves when `encoded` decodes to `length` bytes whose id is `hash`; REMOTE_BLOCK_MISMATCH
   * (naming `where`: proxy, VM, disk, offset) when it does not. `encoded` is left as it is.
   */
  async verify(encoded: Buffer, hash: Buffer, length: number, where: ErrorLocation): Promise<void> {
    while (this.running >= this.limit) await new Promise<void>((r) => this.waiting.push(r));
    this.running++;
    const slot = this.codec.takeSlot(this.blockSize);
    try {
      // The block object goes into the slot's shared `out` buffer (memory the threads already
      // know, reused block after block) and is decoded from there into `raw`: `encoded` stays the
      // caller's, and no buffer is allocated or moved per block. One that does not fit `out`
      // (it cannot decode to a block of this size) goes as its own copy, to fail its check there.
      const inSlot = encoded.length <= slot.out.length;
      if (inSlot) encoded.copy(slot.out);
      const object = inSlot ? slot.out.subarray(0, encoded.length) : new Uint8Array(encoded);
      // A 32-byte copy: a hash decoded from hex is a view of Node's 8 KiB pool, which would be cloned whole.
      const rawLength = await this.codec.decodeSlot(object, new Uint8Array(hash), `block ${hash.toString('hex')}`, slot);
      if (rawLength !== length) throw new FerryError('REPO_CORRUPT_OBJECT', `it holds ${rawLength} bytes where the disk has ${length}`);
    } catch (err) {
      // PLUGIN_NOT_FOUND (a compressor this host lacks), WORKER_FAILED: not the proxy's fault.
      if (!(err instanceof FerryError) || err.code !== 'REPO_CORRUPT_OBJECT') throw err instanceof FerryError ? err.at(where) : err;
      throw new FerryError(
        'REMOTE_BLOCK_MISMATCH',
        `the proxy sent a block that is not what its id ${hash.toString('hex')} says (${(err as Error).message}); nothing was stored for it`,
        where,
        { cause: err },
      );
    } finally {
      this.codec.giveSlot(slot);
      this.running--;
      this.waiting.shift()?.();
    }
  }
}
