import { FerryError, type ErrorLocation } from '@ferry/core/plugin';
import { nbdCommandName, nbdErrnoName } from './nbd-protocol.js';

/**
 * The server's own error for one request, kept as the `cause` of the FerryError so callers (a
 * restore writing to an NBD target, say) can tell ENOSPC from EIO without parsing messages.
 */
export class NbdServerError extends Error {
  constructor(
    readonly errno: number,
    readonly command: number,
    readonly serverMessage: string,
  ) {
    super(`${nbdErrnoName(errno)} on ${nbdCommandName(command)}${serverMessage ? `: ${serverMessage}` : ''}`);
    this.name = 'NbdServerError';
  }

  /** `EIO`, `ENOSPC`, ... or `errno` for values the spec does not define. */
  get errnoName(): string {
    return nbdErrnoName(this.errno).split(' ')[0];
  }
}

/** Names the export the way every message of this package does: `export 'disk0'`. */
export function exportLabel(exportName: string): string {
  return `export '${exportName}'`;
}

/** Could not connect, or the handshake failed: the source cannot be reached through this export. */
export function unreachable(address: string, exportName: string, reason: string, cause?: unknown): FerryError {
  return new FerryError('SOURCE_UNREACHABLE', `cannot open NBD ${exportLabel(exportName)} at ${address}: ${reason}`, { host: address }, { cause });
}

/** A request failed, or the connection broke while requests were in flight. */
export function readFailed(detail: string, where: ErrorLocation, cause?: unknown): FerryError {
  return new FerryError('TRANSPORT_READ_FAILED', detail, where, { cause });
}
