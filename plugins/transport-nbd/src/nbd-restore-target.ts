import { FerryError, type WritableDisk } from '@ferry/core/plugin';
import type { NbdClient } from './nbd-client.js';
import { exportLabel } from './nbd-errors.js';

/**
 * A restore target on an NBD export: writes, WRITE_ZEROES (so zero blocks stay unallocated on servers
 * that can) and FLUSH. The client's request errors become `RESTORE_TARGET` naming the export.
 */
export class NbdRestoreTarget implements WritableDisk {
  constructor(private readonly client: NbdClient) {}

  get size(): number {
    return this.client.size;
  }

  get label(): string {
    return `NBD ${exportLabel(this.client.exportName)} at ${this.client.address}`;
  }

  write(offset: number, data: Uint8Array): Promise<void> {
    return this.client.write(offset, data).catch((err) => Promise.reject(this.failed('write', err, offset)));
  }

  writeZeroes(offset: number, length: number): Promise<void> {
    return this.client.writeZeroes(offset, length).catch((err) => Promise.reject(this.failed('write zeroes', err, offset)));
  }

  flush(): Promise<void> {
    return this.client.flush().catch((err) => Promise.reject(this.failed('flush', err)));
  }

  close(): Promise<void> {
    return this.client.close();
  }

  private failed(op: string, err: unknown, offset?: number): FerryError {
    const detail = err instanceof FerryError ? err.detail : (err as Error)?.message;
    return new FerryError('RESTORE_TARGET', `${op} on ${this.label} failed: ${detail}`, { host: this.client.address, offset }, { cause: err });
  }
}
