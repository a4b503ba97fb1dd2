import type { Extent } from './extent.js';

/**
 * Guest runtime contract: what the guest interaction proxy deploys into a guest OS to make a backup
 * application-consistent (quiesce applications, freeze file systems) and to learn what the guest
 * knows (swap/pagefile extents).
 *
 * Order in a session: `connect` → `prepare` (pre-freeze actions) → `freeze` → the source host's
 * snapshot → `thaw` (always, also when the snapshot failed) → `afterBackup` (post-backup actions,
 * only after a successful session) → `close` (always).
 *
 * Invariants:
 * - `thaw` is called whenever `freeze` was called, and must not throw for a guest already thawed.
 * - `freeze` resolves only when the guest's file systems are frozen, and reports how many.
 *
 * Optional members and their defaults:
 * - `prepare` missing: no pre-freeze actions.
 * - `afterBackup` missing: no post-backup actions (for example no log truncation).
 * - `skipExtents` missing: no disk ranges are known to hold swap or pagefile.
 */
export interface GuestRuntime {
  connect(vm: string, options: Record<string, unknown>): Promise<GuestSession>;
}

export interface GuestSession {
  prepare?(): Promise<void>;
  freeze(): Promise<{ frozen: number }>;
  thaw(): Promise<void>;
  afterBackup?(outcome: 'success' | 'failed'): Promise<void>;
  skipExtents?(disk: string): Promise<Extent[]>;
  close(): Promise<void>;
}
