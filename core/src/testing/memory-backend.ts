import type { RepositoryBackend } from '../contracts/repository-backend.js';
import { FerryError } from '../errors.js';

/**
 * A repository backend in memory, for tests of the core and of plugins that need a repository
 * without a disk. Objects are copied in and out, so callers cannot change stored bytes by accident;
 * `objects` is exposed for tests that damage data on purpose.
 */
export class MemoryBackend implements RepositoryBackend {
  readonly objects = new Map<string, Buffer>();
  readonly location = 'memory:';
  puts = 0;

  async get(key: string): Promise<Uint8Array> {
    const v = this.objects.get(key);
    if (!v) throw new FerryError('REPO_OBJECT_NOT_FOUND', `object ${key} not found in memory`, { object: key });
    return Buffer.from(v);
  }

  async getRange(key: string, offset: number, length: number): Promise<Uint8Array> {
    return (await this.get(key)).subarray(offset, offset + length);
  }

  async getRangeInto(key: string, offset: number, into: Uint8Array): Promise<void> {
    const v = this.objects.get(key);
    if (!v) throw new FerryError('REPO_OBJECT_NOT_FOUND', `object ${key} not found in memory`, { object: key });
    if (offset + into.length > v.length) throw new FerryError('REPO_CORRUPT_OBJECT', `object is shorter than ${offset + into.length} bytes`, { object: key });
    into.set(v.subarray(offset, offset + into.length));
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    this.puts++;
    this.objects.set(key, Buffer.from(data));
  }

  async putIfAbsent(key: string, data: Uint8Array): Promise<boolean> {
    if (this.objects.has(key)) return false;
    await this.put(key, data);
    return true;
  }

  async has(key: string): Promise<boolean> {
    return this.objects.has(key);
  }

  async *list(prefix: string): AsyncIterable<string> {
    for (const k of [...this.objects.keys()].sort()) if (k.startsWith(prefix)) yield k;
  }

  async delete(key: string): Promise<void> {
    this.objects.delete(key);
  }
}
