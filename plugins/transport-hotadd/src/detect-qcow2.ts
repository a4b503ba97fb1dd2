import type { FileHandle } from 'node:fs/promises';

/** First four bytes of every qcow2 image ("QFI\xfb"). */
export const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/**
 * Whether an open image is qcow2. Checked on the bytes, not only on `disk.format`, because reading a
 * qcow2 file as raw would back up its metadata as if it were the guest's disk.
 */
export async function detectQcow2(fh: FileHandle): Promise<boolean> {
  const head = Buffer.alloc(QCOW2_MAGIC.length);
  const { bytesRead } = await fh.read(head, 0, head.length, 0);
  return bytesRead === head.length && head.equals(QCOW2_MAGIC);
}
