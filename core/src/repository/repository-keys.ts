import { createCipheriv, createDecipheriv, randomBytes, scrypt, type ScryptOptions } from 'node:crypto';
import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError, isFerryError } from '../errors.js';
import { KEY_BYTES, RepositoryCipher, type MasterKeys } from './repository-cipher.js';

/**
 * Key objects, `keys/<key-id>.json` (`docs/repository-format.md`, "Key objects"): the master keys
 * wrapped (AES-256-GCM) by a key derived from a passphrase with scrypt. The scrypt parameters and
 * salt are stored with the wrapped keys, so they can be raised later without touching data.
 *
 * Changing the passphrase writes a new key object (one atomic put) and then deletes the others: a
 * crash leaves the old object, or both (either passphrase opens the repository), never neither.
 */
export const KEYS_PREFIX = 'keys/';

export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/** 2^17 x 8 x 128 bytes = 128 MiB of memory and about half a second per derivation on one core. */
export const DEFAULT_SCRYPT: ScryptParams = { N: 2 ** 17, r: 8, p: 1 };

interface KeyObject {
  format: 'ferry-key';
  version: 1;
  id: string;
  createdAt: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  cipher: 'AES-256-GCM';
  nonce: string;
  /** dataKey ‖ idKey, encrypted, then the 16-byte tag; base64. */
  wrapped: string;
}

export function newMasterKeys(): MasterKeys {
  return { dataKey: randomBytes(KEY_BYTES), idKey: randomBytes(KEY_BYTES) };
}

/** Puts a new key object wrapping `keys` with `passphrase`; returns its key. */
export async function writeKeyObject(
  backend: RepositoryBackend,
  repositoryId: string,
  keys: MasterKeys,
  passphrase: string,
  params: ScryptParams = DEFAULT_SCRYPT,
): Promise<string> {
  const id = `${new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-${randomBytes(4).toString('hex')}`;
  const salt = randomBytes(32);
  const kek = await derive(passphrase, salt, params);
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', kek, nonce);
  c.setAAD(aad(repositoryId, id));
  const body = Buffer.concat([c.update(Buffer.concat([keys.dataKey, keys.idKey])), c.final(), c.getAuthTag()]);
  const obj: KeyObject = {
    format: 'ferry-key',
    version: 1,
    id,
    createdAt: new Date().toISOString(),
    kdf: { name: 'scrypt', ...params, salt: salt.toString('base64') },
    cipher: 'AES-256-GCM',
    nonce: nonce.toString('base64'),
    wrapped: body.toString('base64'),
  };
  const key = `${KEYS_PREFIX}${id}.json`;
  if (!(await backend.putIfAbsent(key, Buffer.from(JSON.stringify(obj, null, 2) + '\n')))) {
    throw new FerryError('REPO_OBJECT_EXISTS', `key object ${key} exists already in ${backend.location}; key objects are never replaced`, { object: key });
  }
  return key;
}

/**
 * Unwraps the master keys with `passphrase`, trying every key object; `keyCheck` (from the config)
 * proves that what was unwrapped are this repository's keys. REPO_WRONG_PASSPHRASE when none opens.
 */
export async function openKeys(
  backend: RepositoryBackend,
  repositoryId: string,
  keyCheck: string,
  passphrase: string,
): Promise<{ cipher: RepositoryCipher; keyObject: string }> {
  const keys: string[] = [];
  for await (const k of backend.list(KEYS_PREFIX)) if (k.endsWith('.json')) keys.push(k);
  if (keys.length === 0) {
    throw new FerryError('REPO_OBJECT_NOT_FOUND', `the encrypted repository at ${backend.location} has no key objects (${KEYS_PREFIX})`, {
      object: KEYS_PREFIX,
    });
  }
  const problems: string[] = [];
  for (const key of keys.sort().reverse()) {
    let obj: KeyObject;
    try {
      obj = parseKeyObject(await backend.get(key), key);
    } catch (err) {
      if (isFerryError(err, 'REPO_OBJECT_NOT_FOUND')) continue; // deleted by a key change meanwhile
      problems.push((err as Error).message);
      continue;
    }
    const master = await unwrap(obj, repositoryId, passphrase);
    if (!master) continue;
    const cipher = new RepositoryCipher(master);
    if (cipher.keyCheck(repositoryId) !== keyCheck) {
      problems.push(`${key} opens with this passphrase but holds other keys than the repository config names`);
      continue;
    }
    return { cipher, keyObject: key };
  }
  throw new FerryError(
    'REPO_WRONG_PASSPHRASE',
    `the passphrase opens none of the ${keys.length} key object(s) of the encrypted repository at ${backend.location}` +
      (problems.length ? ` (${problems.join('; ')})` : ''),
    { object: KEYS_PREFIX },
  );
}

/** Wraps the master keys with a new passphrase, then removes every other key object. */
export async function rewrapKeys(
  backend: RepositoryBackend,
  repositoryId: string,
  cipherKeys: MasterKeys,
  newPassphrase: string,
  params: ScryptParams = DEFAULT_SCRYPT,
): Promise<{ written: string; removed: string[] }> {
  const before: string[] = [];
  for await (const k of backend.list(KEYS_PREFIX)) before.push(k);
  const written = await writeKeyObject(backend, repositoryId, cipherKeys, newPassphrase, params);
  const removed = before.filter((k) => k !== written);
  for (const k of removed) await backend.delete(k);
  return { written, removed };
}

async function unwrap(obj: KeyObject, repositoryId: string, passphrase: string): Promise<MasterKeys | undefined> {
  const kek = await derive(passphrase, Buffer.from(obj.kdf.salt, 'base64'), obj.kdf);
  const body = Buffer.from(obj.wrapped, 'base64');
  const d = createDecipheriv('aes-256-gcm', kek, Buffer.from(obj.nonce, 'base64'));
  d.setAAD(aad(repositoryId, obj.id));
  d.setAuthTag(body.subarray(body.length - 16));
  try {
    const plain = Buffer.concat([d.update(body.subarray(0, body.length - 16)), d.final()]);
    return { dataKey: plain.subarray(0, KEY_BYTES), idKey: plain.subarray(KEY_BYTES, 2 * KEY_BYTES) };
  } catch {
    return undefined;
  }
}

function parseKeyObject(raw: Uint8Array, object: string): KeyObject {
  let obj: KeyObject;
  try {
    obj = JSON.parse(Buffer.from(raw).toString('utf8')) as KeyObject;
  } catch (err) {
    throw new FerryError('REPO_CORRUPT_OBJECT', `key object is not valid JSON: ${(err as Error).message}`, { object });
  }
  const k = obj?.kdf;
  const sane = k?.name === 'scrypt' && [k.N, k.r, k.p].every((v) => Number.isInteger(v) && v > 0) && (k.N & (k.N - 1)) === 0 && k.N <= 2 ** 22 && k.r <= 32 && k.p <= 16;
  if (obj?.format !== 'ferry-key' || obj.version !== 1 || !sane || typeof obj.wrapped !== 'string' || typeof obj.nonce !== 'string') {
    throw new FerryError('REPO_CORRUPT_OBJECT', 'is not a version 1 key object with sane scrypt parameters', { object });
  }
  return obj;
}

function aad(repositoryId: string, keyId: string): Buffer {
  return Buffer.from(`ferry-key\0${repositoryId}\0${keyId}`, 'utf8');
}

/** scrypt off the main thread (libuv pool), so heartbeats and progress keep running meanwhile. */
function derive(passphrase: string, salt: Buffer, params: ScryptParams): Promise<Buffer> {
  const opts: ScryptOptions = { N: params.N, r: params.r, p: params.p, maxmem: 256 * params.N * params.r + 1024 * 1024 };
  return new Promise((resolve, reject) =>
    scrypt(passphrase.normalize('NFC'), salt, KEY_BYTES, opts, (err, key) => (err ? reject(new FerryError('INTERNAL', `scrypt failed: ${err.message}`)) : resolve(key))),
  );
}
