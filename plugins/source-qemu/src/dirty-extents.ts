import { FerryError, type Extent } from '@ferry/core/plugin';
import { NbdClient } from '@ferry/transport-nbd';

/** In a `qemu:dirty-bitmap:*` meta context, flag bit 0 marks a dirty range (QEMU docs/interop/nbd.txt). */
const DIRTY = 1;
/** Every answer advances by at least one descriptor; only a broken server could need more rounds. */
const MAX_ROUNDS = 1_000_000;

/**
 * The dirty ranges of `bitmap` over a whole NBD export, merged and in order. QMP has no command that
 * lists a bitmap's ranges, so the host asks its own NBD server, as any NBD client would
 * (`NBD_CMD_BLOCK_STATUS` on `qemu:dirty-bitmap:<bitmap>`); the export must carry the bitmap.
 * Errors are FerryErrors naming the export (SOURCE_UNREACHABLE, TRANSPORT_READ_FAILED, PLUGIN_FAILED).
 */
export async function readDirtyExtents(address: string, exportName: string, bitmap: string): Promise<Extent[]> {
  const context = `qemu:dirty-bitmap:${bitmap}`;
  const client = await NbdClient.connect({ address, exportName, metaContexts: [context], handshakeTimeoutMs: 10_000, replyTimeoutMs: 30_000 });
  try {
    if (!client.metaContexts.has(context)) {
      throw new FerryError('PLUGIN_FAILED', `NBD export ${exportName} at ${address} does not offer ${context}`, { host: address });
    }
    const out: Extent[] = [];
    let offset = 0;
    for (let round = 0; offset < client.size; round++) {
      if (round >= MAX_ROUNDS) throw new FerryError('PLUGIN_FAILED', `${context} of ${exportName}: no end after ${MAX_ROUNDS} block status replies`, { host: address });
      const got = (await client.blockStatus(offset, client.size - offset)).get(context) ?? [];
      const last = got.at(-1);
      if (!last || last.offset + last.length <= offset) {
        throw new FerryError('PLUGIN_FAILED', `${context} of ${exportName}: the server described nothing at ${offset}`, { host: address, offset });
      }
      for (const e of got) if (e.flags & DIRTY) addExtent(out, e.offset, e.length);
      offset = last.offset + last.length;
    }
    return out;
  } finally {
    await client.close().catch(() => undefined);
  }
}

function addExtent(out: Extent[], offset: number, length: number): void {
  const prev = out.at(-1);
  if (prev && prev.offset + prev.length === offset) prev.length += length;
  else out.push({ offset, length });
}
