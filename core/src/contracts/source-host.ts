import type { Extent } from './extent.js';

/**
 * Source host contract: a hypervisor host and its datastores.
 *
 * A source host knows the VMs and their disks, takes a point-in-time snapshot of a VM for a session
 * and removes it again. It is configured by the job's `source:` section (everything but `host`,
 * validated against the `configSchema` the plugin registered).
 *
 * Invariants:
 * - `inventory` names an unknown VM or disk with FerryError `SOURCE_VM_NOT_FOUND` /
 *   `SOURCE_DISK_NOT_FOUND`; an unreachable host with `SOURCE_UNREACHABLE`, naming the host.
 * - The disks of a snapshot do not change while the session reads them.
 * - `VmSnapshot.release` is called exactly once for every snapshot taken, on every exit path (success,
 *   failure, interruption), and must not throw for a snapshot that is already gone. `success` means
 *   the restore point was committed: only then may the host retire the change tracking of
 *   `SessionInfo.previous`; on `failed` it must keep every write since that point trackable.
 * - A disk with `changes` must report through its transport every byte written since
 *   `changes.since`; when in doubt, leave `changes` out and say why in `fullReason`.
 *
 * Optional members and their defaults:
 * - `snapshot` missing: the disks are at rest (powered-off VM, image files); the session reads the
 *   inventory's disks directly and releases nothing.
 * - `prepareSnapshot` missing: `snapshot` does all its work while the guest's file systems are frozen
 *   (when the VM has guest processing). Present, the session calls it before the freeze, then
 *   `take` inside the freeze window and `open` after the thaw; `snapshot` is then not called.
 *   `abandon` is called exactly once when `open` did not resolve (a failed `take`, an interrupt,
 *   guest processing failing under `onGuestFailure: fail`); after `open` resolved, only the
 *   `VmSnapshot`'s `release` cleans up.
 */
export interface SourceHost {
  /** Name shown in reports and errors, for example `file:/srv/images` or `qemu:unix:/run/vm1.qmp`. */
  readonly label: string;
  inventory(vms: readonly VmSelection[]): Promise<VmInventory[]>;
  snapshot?(vm: VmInventory, session: SessionInfo): Promise<VmSnapshot>;
  /**
   * Since core API 1.2: the VM's QEMU guest agent socket (`unix:PATH`) when the host knows it, for a
   * `guest:` with `via: qga` (or `freeze: agent`) that names no `agent:`. Missing or undefined: the
   * job must name it.
   */
  guestAgent?(vm: string): Promise<string | undefined>;
  /** Since core API 1.2: the snapshot in three steps, so only `take` runs inside the guest's freeze window. */
  prepareSnapshot?(vm: VmInventory, session: SessionInfo): Promise<PreparedSnapshot>;
}

/**
 * A snapshot split around the guest's freeze. `prepareSnapshot` does what need not wait for the freeze
 * (leftover clean-up, bitmap checks, creating overlays); `take` only the atomic point-in-time step
 * (for QEMU the one `transaction`); `open` what makes the point readable (NBD exports, proofs).
 */
export interface PreparedSnapshot {
  take(): Promise<void>;
  open(): Promise<VmSnapshot>;
  /** Removes what `prepareSnapshot` and `take` made (outcome `failed`); must not throw for nothing left. */
  abandon(): Promise<void>;
}

/** One VM as the job names it. `disks` missing means every disk of the VM. */
export interface VmSelection {
  name: string;
  disks?: string[];
  /** The rest of the VM's entry in the job file, for host-specific keys. */
  options: Record<string, unknown>;
}

export interface VmInventory {
  name: string;
  disks: SourceDisk[];
}

/**
 * One disk as a transport can reach it. A disk names at least one access path: a file or block
 * device the proxy may open directly (hot-add), or an NBD export (network).
 */
export interface SourceDisk {
  /** The disk's name within its VM, stable between sessions (restore points are keyed by it). */
  name: string;
  /** Virtual size in bytes, when the host knows it before a transport opens the disk. */
  size?: number;
  /** Image or device path on the datastore, for transports that open it directly. */
  path?: string;
  /** Image format at `path`: `raw` covers raw files and block devices. */
  format?: 'raw' | 'qcow2' | string;
  /** NBD export of the disk, for network transports. */
  nbd?: { address: string; exportName: string; bitmap?: string; tls?: boolean };
  /**
   * What this session's snapshot started for the next incremental run (for QEMU: the persistent
   * dirty bitmap that records writes from now on). The core stores it with the disk in the new
   * restore point and hands it back in `SessionInfo.previous` next time. Opaque to the core.
   */
  changeTracking?: ChangeTracking;
  /**
   * Present when the host vouches for the writes since restore point `since`: the transport's
   * `changedBlocks` (or `extents`, when the host knows them itself) covers every byte written since.
   * Absent: the session reads the whole disk, and `fullReason` says why.
   */
  changes?: { since: string; extents?: Extent[] };
  /** Why changed-block tracking cannot be used this time (missing or foreign bitmap, ...). */
  fullReason?: string;
  /**
   * Set by the session, not by source hosts: the ranges the VM's guest runtime reported as swap or
   * pagefile (`GuestSession.skipExtents`) at this snapshot. A block filter that drops swap (such as
   * `swap`) returns them from its `skipExtents`, so they are never read and counted as its own.
   */
  guestSkip?: Extent[];
}

/** Host-specific facts that identify a change-tracking state, e.g. `{ id: bitmap, node: 'disk0' }`. */
export interface ChangeTracking {
  id: string;
  [key: string]: string;
}

export interface SessionInfo {
  job: string;
  sessionId: string;
  /** The VM's newest committed restore point of this job, if any: what an incremental builds on. */
  previous?: PreviousPoint;
}

export interface PreviousPoint {
  id: string;
  disks: { name: string; sizeBytes: number; changeTracking?: ChangeTracking }[];
}

export interface VmSnapshot {
  disks: SourceDisk[];
  /**
   * Called after every disk was read and before the restore point is committed: throw when the
   * point-in-time view may not have held (for QEMU: the fleecing job died), and the VM's point is
   * not committed. Missing: the view is assumed to have held.
   */
  check?(): Promise<void>;
  release(outcome: 'success' | 'failed'): Promise<void>;
}
