import { createCipheriv, createDecipheriv, createHmac, randomBytes, webcrypto } from 'node:crypto';
import { FerryError } from '../errors.js';
import { crc32 } from '../util/checksums.js';

/**
 * Encryption at rest (`docs/repository-format.md`, "Encryption"). One master key set per repository:
 * a data key (AES-256-GCM for block records and metadata objects) and a block-id key (block ids are
 * HMAC-SHA256(idKey, content) instead of SHA-256(content), so stored ids reveal nothing about
 * content, yet equal blocks still get equal ids and deduplicate).
 *
 * Nonces are 96 random bits per sealed object. With random nonces the chance that two of 2^32
 * encryptions under one key share a nonce is about 2^-33; 2^32 blocks of 1 MiB are 4 PiB, far beyond
 * one repository. Associated data binds every ciphertext to what it is (a block of this id, a
 * metadata object of this name), so a stored record moved to another id or name fails its tag.
 */
export interface MasterKeys {
  dataKey: Buffer;
  idKey: Buffer;
}

export const KEY_BYTES = 32;
const NONCE = 12;
const TAG = 16;

/** Encrypted block record: `FBE1`, CRC-32, version, nonce, ciphertext of the FBK1 object, tag. */
export const SEALED_BLOCK_MAGIC = Buffer.from('FBE1', 'ascii');
const BLOCK_HEAD = 21;
/** Sealed metadata object: `FENC`, version, nonce, ciphertext, tag. */
export const SEALED_OBJECT_MAGIC = Buffer.from('FENC', 'ascii');
const OBJECT_HEAD = 17;
/** Bytes a sealed object adds to its plaintext. */
export const SEALED_OBJECT_OVERHEAD = OBJECT_HEAD + TAG;

const BLOCK_AAD = Buffer.from('ferry-block\0', 'ascii');
const OBJECT_AAD = 'ferry-object\0';

export class RepositoryCipher {
  private subtleKey?: Promise<webcrypto.CryptoKey>;

  constructor(readonly keys: MasterKeys) {
    if (keys.dataKey.length !== KEY_BYTES || keys.idKey.length !== KEY_BYTES) throw new FerryError('INTERNAL', 'master keys must be 32 bytes each');
  }

  /**
   * `sealBlock` on libuv's thread pool (WebCrypto): the same record, but the AES work leaves the main
   * thread, which a backup needs for everything else (measured here: sealing 1 MiB records on the main
   * thread runs at ~540 MiB/s and slowed a 512 MiB backup by more than the sealing itself).
   */
  async sealBlockAsync(id: Uint8Array, record: Uint8Array): Promise<Buffer> {
    const nonce = randomBytes(NONCE);
    const sealed = await webcrypto.subtle.encrypt(
      { name: 'AES-GCM', iv: nonce, additionalData: Buffer.concat([BLOCK_AAD, id]), tagLength: TAG * 8 },
      await this.cryptoKey(),
      // Web Crypto refuses views of shared memory (the pipe's block slots): those are copied once.
      record.buffer instanceof SharedArrayBuffer ? new Uint8Array(record) : record,
    );
    const out = Buffer.allocUnsafeSlow(BLOCK_HEAD + sealed.byteLength); // owns its memory: may move to another thread
    SEALED_BLOCK_MAGIC.copy(out, 0);
    out[8] = 1;
    nonce.copy(out, 9);
    out.set(new Uint8Array(sealed), BLOCK_HEAD); // ciphertext, then the tag: the record's layout
    out.writeUInt32LE(crc32(out.subarray(8)), 4);
    return out;
  }

  /** `openBlock` on libuv's thread pool. */
  async openBlockAsync(id: Uint8Array, stored: Uint8Array, object: string): Promise<Buffer> {
    const buf = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
    checkSealedBlock(buf, object);
    try {
      const plain = await webcrypto.subtle.decrypt(
        { name: 'AES-GCM', iv: buf.subarray(9, 9 + NONCE), additionalData: Buffer.concat([BLOCK_AAD, id]), tagLength: TAG * 8 },
        await this.cryptoKey(),
        buf.subarray(BLOCK_HEAD),
      );
      return Buffer.from(plain);
    } catch (err) {
      throw new FerryError(
        'REPO_CORRUPT_OBJECT',
        "block record fails its AES-256-GCM authentication check (damaged, moved from another place, or not written with this repository's key)",
        { object },
        { cause: err },
      );
    }
  }

  private cryptoKey(): Promise<webcrypto.CryptoKey> {
    this.subtleKey ??= webcrypto.subtle.importKey('raw', this.keys.dataKey, 'AES-GCM', false, ['encrypt', 'decrypt']);
    return this.subtleKey;
  }

  /** The key block ids are made with (handed to the block codec's worker threads). */
  get idKey(): Buffer {
    return this.keys.idKey;
  }

  /** A value that proves the master keys without revealing them (stored in the repository config). */
  keyCheck(repositoryId: string): string {
    return createHmac('sha256', this.keys.dataKey).update(`ferry key check\0${repositoryId}`).digest('hex');
  }

  /** Encrypts a block object (FBK1) stored under block id `id`. */
  sealBlock(id: Uint8Array, record: Uint8Array): Buffer {
    const out = Buffer.allocUnsafeSlow(BLOCK_HEAD + record.length + TAG); // owns its memory: may move to another thread
    SEALED_BLOCK_MAGIC.copy(out, 0);
    out[8] = 1;
    const nonce = randomBytes(NONCE);
    nonce.copy(out, 9);
    const c = createCipheriv('aes-256-gcm', this.keys.dataKey, nonce);
    c.setAAD(Buffer.concat([BLOCK_AAD, id]));
    const n = c.update(record).copy(out, BLOCK_HEAD);
    c.final();
    c.getAuthTag().copy(out, BLOCK_HEAD + n);
    out.writeUInt32LE(crc32(out.subarray(8)), 4);
    return out;
  }

  /** The block object inside a sealed record; REPO_CORRUPT_OBJECT naming `object` when it fails. */
  openBlock(id: Uint8Array, stored: Uint8Array, object: string): Buffer {
    const buf = Buffer.from(stored.buffer, stored.byteOffset, stored.byteLength);
    checkSealedBlock(buf, object);
    return this.decrypt(buf.subarray(9, 9 + NONCE), buf.subarray(BLOCK_HEAD), Buffer.concat([BLOCK_AAD, id]), 'block record', object);
  }

  /** Encrypts a metadata object; `name` is what it is (bound into the tag). */
  sealObject(name: string, plain: Uint8Array): Buffer {
    const out = Buffer.allocUnsafeSlow(OBJECT_HEAD + plain.length + TAG);
    SEALED_OBJECT_MAGIC.copy(out, 0);
    out[4] = 1;
    const nonce = randomBytes(NONCE);
    nonce.copy(out, 5);
    const c = createCipheriv('aes-256-gcm', this.keys.dataKey, nonce);
    c.setAAD(Buffer.from(OBJECT_AAD + name, 'utf8'));
    const n = c.update(plain).copy(out, OBJECT_HEAD);
    c.final();
    c.getAuthTag().copy(out, OBJECT_HEAD + n);
    return out;
  }

  openObject(name: string, sealed: Uint8Array, object: string): Buffer {
    const buf = Buffer.from(sealed.buffer, sealed.byteOffset, sealed.byteLength);
    if (buf.length < SEALED_OBJECT_OVERHEAD || !buf.subarray(0, 4).equals(SEALED_OBJECT_MAGIC)) {
      throw new FerryError('REPO_CORRUPT_OBJECT', 'is not an encrypted object (no FENC header) in an encrypted repository', { object });
    }
    if (buf[4] !== 1) throw new FerryError('REPO_CORRUPT_OBJECT', `encrypted object has unsupported version ${buf[4]}`, { object });
    return this.decrypt(buf.subarray(5, 5 + NONCE), buf.subarray(OBJECT_HEAD), Buffer.from(OBJECT_AAD + name, 'utf8'), 'encrypted object', object);
  }

  private decrypt(nonce: Buffer, body: Buffer, aad: Buffer, what: string, object: string): Buffer {
    const d = createDecipheriv('aes-256-gcm', this.keys.dataKey, nonce);
    d.setAAD(aad);
    d.setAuthTag(body.subarray(body.length - TAG));
    const out = Buffer.allocUnsafe(body.length - TAG);
    try {
      const n = d.update(body.subarray(0, body.length - TAG)).copy(out, 0);
      d.final();
      return n === out.length ? out : out.subarray(0, n);
    } catch (err) {
      throw new FerryError(
        'REPO_CORRUPT_OBJECT',
        `${what} fails its AES-256-GCM authentication check (damaged, moved from another place, or not written with this repository's key)`,
        { object },
        { cause: err },
      );
    }
  }
}

/**
 * Checks a sealed block record's frame and CRC-32 without the key (garbage collection copies records
 * byte for byte after this check). The CRC covers the ciphertext: plain bit rot is told from
 * tampering, which only the GCM tag catches.
 */
export function checkSealedBlock(buf: Buffer, object: string): void {
  const bad = (why: string): FerryError => new FerryError('REPO_CORRUPT_OBJECT', `encrypted block record ${why}`, { object });
  if (buf.length < BLOCK_HEAD + TAG || !buf.subarray(0, 4).equals(SEALED_BLOCK_MAGIC)) throw bad('has no FBE1 header');
  if (crc32(buf.subarray(8)) !== buf.readUInt32LE(4)) throw bad('fails its CRC-32 check');
  if (buf[8] !== 1) throw bad(`has unsupported version ${buf[8]}`);
}

/** HMAC-SHA256 block id (encrypted repositories); the codec's worker threads call it. */
export function keyedBlockId(idKey: Uint8Array, content: Uint8Array): Buffer {
  return createHmac('sha256', idKey).update(content).digest();
}
