import { Duplex } from 'node:stream';
import { PipeConnection } from './pipe-connection.js';
import type { Connection, PeerRole } from './types.js';

/**
 * One end of an in-memory byte pipe. A write completes only when the other end's reader took it
 * below its high-water mark, so the pair has the same backpressure as a socket.
 */
class PairEnd extends Duplex {
  other!: PairEnd;
  private wantRead?: () => void;

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.other.destroyed) return done();
    if (this.other.push(chunk)) done();
    else this.other.wantRead = () => done();
  }

  override _read(): void {
    const go = this.wantRead;
    this.wantRead = undefined;
    go?.();
  }

  override _final(done: (err?: Error | null) => void): void {
    if (!this.other.destroyed) this.other.push(null);
    done();
  }

  override _destroy(err: Error | null, done: (err?: Error | null) => void): void {
    // Like a dropped TCP connection: the other end closes without having seen an orderly end.
    if (!this.other.destroyed) this.other.destroy();
    done(err);
  }
}

export interface ConnectionPairOptions {
  /** Roles of the two ends (default repository, proxy: the data pipe's direction). */
  roles?: [PeerRole, PeerRole];
  heartbeatMs?: number;
  maxFrameBytes?: number;
}

/**
 * Two connected Connections in memory with the same frames, CRCs, backpressure, heartbeats and
 * close semantics as over TLS, minus TLS and HELLO: `a.peer` describes b and `b.peer` describes a.
 */
export function connectionPair(opts: ConnectionPairOptions = {}): [Connection, Connection] {
  const [roleA, roleB] = opts.roles ?? ['repository', 'proxy'];
  const endA = new PairEnd();
  const endB = new PairEnd();
  endA.other = endB;
  endB.other = endA;
  const common = { heartbeatMs: opts.heartbeatMs, maxFrameBytes: opts.maxFrameBytes, address: 'memory' };
  const a = PipeConnection.established(endA, { role: roleB, name: `memory-${roleB}`, address: 'memory' }, { ...common, local: { role: roleA, name: `memory-${roleA}` } });
  const b = PipeConnection.established(endB, { role: roleA, name: `memory-${roleA}`, address: 'memory' }, { ...common, local: { role: roleB, name: `memory-${roleB}` } });
  return [a, b];
}
