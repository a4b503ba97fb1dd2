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
 *   failure, interruption), and must not throw for a snapshot that is already gone.
 *
 * Optional members and their defaults:
 * - `snapshot` missing: the disks are at rest (powered-off VM, image files); the session reads the
 *   inventory's disks directly and releases nothing.
 */
export interface SourceHost {
  /** Name shown in reports and errors, for example `file:/srv/images` or `qemu:unix:/run/vm1.qmp`. */
  readonly label: string;
  inventory(vms: readonly VmSelection[]): Promise<VmInventory[]>;
  snapshot?(vm: VmInventory, session: SessionInfo): Promise<VmSnapshot>;
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
   * Changed-block tracking: ranges written since the restore point identified by `since`.
   * Absent when the host cannot tell; the session then reads the whole disk and says why.
   */
  changes?: { since: string; extents?: Extent[]; reason?: string };
}

export interface SessionInfo {
  job: string;
  sessionId: string;
}

export interface VmSnapshot {
  disks: SourceDisk[];
  release(outcome: 'success' | 'failed'): Promise<void>;
}
