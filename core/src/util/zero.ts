const ZEROS = Buffer.alloc(1024 * 1024);

/** True when every byte is zero; compares against a zero buffer with memcmp speed. */
export function isAllZero(data: Uint8Array): boolean {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let off = 0; off < buf.length; off += ZEROS.length) {
    const end = Math.min(buf.length, off + ZEROS.length);
    if (!buf.subarray(off, end).equals(ZEROS.subarray(0, end - off))) return false;
  }
  return true;
}
