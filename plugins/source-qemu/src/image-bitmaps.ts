import { promises as fs } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';

/*
 * Reads the names of the persistent dirty bitmaps stored in a qcow2 image file, from the header's
 * bitmaps extension and the bitmap directory (QEMU docs/interop/qcow2.txt, "Bitmaps extension").
 *
 * Why: the host offers a disk's image path to hot-add only when it has proved that the file this
 * proxy opens under that name is the image QEMU holds. QEMU writes every persistent bitmap into the
 * image when `blockdev-snapshot` makes the image read-only, including the bitmap this session has just
 * created, whose name holds the session id; finding that name in the file is the proof.
 */

const QCOW2_MAGIC = 0x514649fb;
const BITMAPS_EXTENSION = 0x23852875;
/** Autoclear feature bit 0: the bitmaps extension is consistent with the image. */
const AUTOCLEAR_BITMAPS = 1n;
/** Reads of metadata stay small: header extensions live in the first cluster, directories are tiny. */
const MAX_HEADER_BYTES = 64 * 1024;
const MAX_DIRECTORY_BYTES = 1024 * 1024;
const DIRECTORY_ENTRY_FIXED = 24;

/**
 * Proves that `file`, opened here, is the image QEMU holds: it must hold `bitmap`, a name only this
 * session's snapshot can have put there. Resolves why not otherwise; never throws.
 */
export async function proveImage(file: string, bitmap: string | undefined): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (!bitmap) return { ok: false, reason: `no bitmap of this session to look for in ${file}` };
  const found = await imageBitmapNames(file).catch((err: unknown) => ({ reason: `${file} cannot be read here: ${String(err)}` }));
  if ('reason' in found) return { ok: false, reason: found.reason };
  if (!found.names.includes(bitmap)) return { ok: false, reason: `${file} does not hold bitmap ${bitmap}, so it is not the image QEMU holds` };
  return { ok: true };
}

/**
 * The bitmap names in `file`, or why there are none to read: not qcow2, version 2, no consistent
 * bitmaps extension. Throws only when the file cannot be read at all.
 */
export async function imageBitmapNames(file: string): Promise<{ names: string[] } | { reason: string }> {
  const fh = await fs.open(file, 'r');
  try {
    const header = await readAt(fh, 0, MAX_HEADER_BYTES);
    if (header.length < 104 || header.readUInt32BE(0) !== QCOW2_MAGIC) return { reason: `${file} is not a qcow2 image` };
    if (header.readUInt32BE(4) < 3) return { reason: `${file} is a version 2 qcow2 image, which holds no bitmaps` };
    if ((header.readBigUInt64BE(88) & AUTOCLEAR_BITMAPS) === 0n) return { reason: `${file} has no consistent bitmaps extension` };
    const ext = findExtension(header, header.readUInt32BE(100), BITMAPS_EXTENSION);
    if (!ext || ext.length < 24) return { reason: `${file} has no bitmaps extension` };
    const count = ext.readUInt32BE(0);
    const dirSize = Number(ext.readBigUInt64BE(8));
    const dirOffset = Number(ext.readBigUInt64BE(16));
    if (dirSize > MAX_DIRECTORY_BYTES) return { reason: `${file} has a bitmap directory of ${dirSize} bytes, more than this check reads` };
    return { names: parseDirectory(await readAt(fh, dirOffset, dirSize), count) };
  } finally {
    await fh.close();
  }
}

async function readAt(fh: FileHandle, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  const { bytesRead } = await fh.read(buf, 0, length, offset);
  return buf.subarray(0, bytesRead);
}

/** Header extensions: type (4), length (4), data padded to 8 bytes; type 0 ends the list. */
function findExtension(header: Buffer, start: number, type: number): Buffer | undefined {
  let at = start;
  while (at + 8 <= header.length) {
    const t = header.readUInt32BE(at);
    const len = header.readUInt32BE(at + 4);
    if (t === 0 || at + 8 + len > header.length) return undefined;
    if (t === type) return header.subarray(at + 8, at + 8 + len);
    at += 8 + Math.ceil(len / 8) * 8;
  }
  return undefined;
}

/**
 * Directory entries: table offset (8), table size (4), flags (4), type (1), granularity bits (1),
 * name size (2), extra data size (4), extra data, name; each entry padded to 8 bytes.
 */
function parseDirectory(dir: Buffer, count: number): string[] {
  const names: string[] = [];
  let at = 0;
  for (let i = 0; i < count && at + DIRECTORY_ENTRY_FIXED <= dir.length; i++) {
    const nameSize = dir.readUInt16BE(at + 18);
    const extra = dir.readUInt32BE(at + 20);
    const nameAt = at + DIRECTORY_ENTRY_FIXED + extra;
    if (nameAt + nameSize > dir.length) break;
    names.push(dir.toString('utf8', nameAt, nameAt + nameSize));
    at += Math.ceil((DIRECTORY_ENTRY_FIXED + extra + nameSize) / 8) * 8;
  }
  return names;
}
