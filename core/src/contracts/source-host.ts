import type { Extent } from './extent.js';
import type { GuestAgentChannel } from './guest-runtime.js';

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
 * - `listVms` missing: jobs on this host name their VMs; `defineVm` missing: no `restore --define`.
 */
export interface SourceHost {
  /** Name shown in reports and errors, for example `file:/srv/images` or `qemu:unix:/run/vm1.qmp`. */
  readonly label: string;
  inventory(vms: readonly VmSelection[]): Promise<VmInventory[]>;
  snapshot?(vm: VmInventory, session: SessionInfo): Promise<VmSnapshot>;
  /**
   * Since core API 1.2: the VM's QEMU guest agent when the host knows it, for a `guest:` with
   * `via: qga` (or `freeze: agent`) that names no `agent:`: its socket (`unix:PATH`), or a
   * `GuestAgentChannel` when only the host can talk to the agent (libvirt holds the socket of a
   * running domain). Missing or undefined: the job must name it.
   */
  guestAgent?(vm: string): Promise<string | GuestAgentChannel | undefined>;
  /** Since core API 1.2: the snapshot in three steps, so only `take` runs inside the guest's freeze window. */
  prepareSnapshot?(vm: VmInventory, session: SessionInfo): Promise<PreparedSnapshot>;
  /**
   * Names of every VM the host has, for a job's `vms: all` or `vms: { match: GLOB }`. Missing: the
   * job must list its VMs (JOB_INVALID names the key).
   */
  listVms?(): Promise<string[]>;
  /**
   * Defines a new VM from a restore point's `VmDefinition` with its disks at the restored files
   * (`ferry restore --define NAME`): a new identity (UUID, MAC addresses), never over an existing VM
   * of that name (RESTORE_TARGET_EXISTS). Missing: the host cannot define VMs.
   */
  defineVm?(definition: VmDefinition, target: DefineTarget): Promise<DefinedVm>;
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

/** A VM's definition as its host describes it (libvirt: the domain XML), kept with the restore point. */
export interface VmDefinition {
  /** What `text` is, e.g. `libvirt-domain-xml`; a host defines only formats it knows. */
  format: string;
  text: string;
}

export interface DefineTarget {
  name: string;
  /** Only check that the VM could be defined (name free, definition usable); define nothing. */
  dryRun?: boolean;
  /** The point's disks, restored: by the disk's name in the point. */
  disks: { name: string; path: string; format: 'raw' | 'qcow2' | string }[];
}

export interface DefinedVm {
  name: string;
  /** The host's id of the new VM (libvirt: its UUID). */
  id?: string;
  /** What the definition kept or changed (devices not in the point, regenerated identities). */
  notes: string[];
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
  /** What the report should say about the VM as found, e.g. disks left out and why. */
  notes?: string[];
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
   * Ranges the session already knows need not be stored, for example the swap and pagefile extents
   * a guest runtime reported (`GuestSession.skipExtents`; keep a swap area's header page out of
   * them). Treated as the skip ranges of a filter named `guest`: merged with the filters' ranges,
   * never read, stored as zeros, counted in `swapBytesSkipped`. Missing: none.
   */
  skipExtents?: Extent[];
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
  /** What the report should say about this snapshot: how it was taken, leftovers of an interrupted session cleaned. */
  notes?: string[];
  /** The VM's definition at the snapshot, stored with the restore point (for `ferry restore --define`). */
  definition?: VmDefinition;
  /**
   * Called after every disk was read and before the restore point is committed: throw when the
   * point-in-time view may not have held (for QEMU: the fleecing job died), and the VM's point is
   * not committed. Missing: the view is assumed to have held.
   */
  check?(): Promise<void>;
  release(outcome: 'success' | 'failed'): Promise<void>;
}
