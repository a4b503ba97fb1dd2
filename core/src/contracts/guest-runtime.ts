import type { Extent } from './extent.js';

/**
 * Guest runtime contract: what a guest plugin deploys into a guest OS for one session to make a
 * backup application-consistent (quiesce applications, freeze file systems) and to learn what the
 * guest knows (swap/pagefile extents). The job's `guest:` key of a VM chooses the runtime by `os`
 * (`linux`, `windows`, or a plugin's own name).
 *
 * Order in a session (the session loop in `core/src/session/backup-session.ts` is the only caller):
 *
 *   connect (deploy) → preFreeze → [source host prepares its snapshot] → freeze → snapshot → thaw
 *   → postThaw → skipExtents (per disk) → data movement → commit → afterBackup (only after the
 *   commit) → close (remove)
 *
 * Invariants the session keeps:
 * - `thaw` is called whenever `freeze` was called (also when `freeze` itself failed or timed out,
 *   the snapshot failed, or the session was interrupted), at most once, before anything else of the
 *   session runs; a VM that fails before its freeze is thawed once all the same (unless `freeze:
 *   none`). `close` is called whenever `connect` resolved, last, on every path.
 * - Every call is bounded by `GuestOptions.timeoutSeconds` and the session's abort signal: the
 *   session stops waiting, records the step as failed and goes on with `thaw`/`close`. A runtime
 *   should stop its own work when `signal` aborts.
 * - `postThaw` is called whenever `preFreeze` was called (also after a failure), after `thaw`: it
 *   releases what quiescing holds (a MySQL read lock, a VSS snapshot set).
 * - `afterBackup` is called only after the VM's restore point was committed, so destructive
 *   post-backup actions (log truncation, user `postBackup` scripts) run only after success.
 * - Failures of `deploy`, `preFreeze` and `freeze` follow the VM's `onGuestFailure` (`fail`: the VM
 *   gets no point; `continue`: the rest of the guest steps before the snapshot are skipped and the
 *   point is crash-consistent, with a warning); failures of later steps are warnings: the point
 *   is as consistent as the freeze made it.
 * - Credentials arrive in `GuestOptions.credentials`, read from the files and environment variables
 *   the job names; a runtime never writes them into a result, an error message or the guest.
 *
 * Invariants a runtime keeps:
 * - `freeze` resolves only when the guest's file systems are frozen (or the application writers
 *   have quiesced, for VSS) and reports how many. Before freezing, the runtime arms a watchdog in
 *   the guest that thaws by itself after `timeoutSeconds` when no `thaw` came (a killed backup
 *   server, a lost connection): a guest is never left frozen.
 * - `thaw` must not throw for a guest already thawed (by the watchdog, or never frozen).
 * - `close` removes everything `connect` and the steps put into the guest (scripts, the runtime,
 *   the watchdog) and must not throw for a connection already lost.
 * - A step that fails throws (a `FerryError` with a code from docs/errors.md naming the step);
 *   a step that succeeds with reservations (one application of two, a VSS writer failing in copy
 *   mode) resolves with `warnings` and the per-application `applications` outcomes.
 *
 * Optional members and their defaults:
 * - `preFreeze` missing: no pre-freeze actions (no script, no application quiescing).
 * - `postThaw` missing: no post-thaw actions.
 * - `afterBackup` missing: no post-backup actions (for example no log truncation).
 * - `skipExtents` missing: no disk ranges are known to hold swap or pagefile.
 */
export interface GuestRuntime {
  /** Reaches the guest and deploys the runtime (the session's `deploy` step). */
  connect(vm: string, options: GuestOptions, signal?: AbortSignal): Promise<GuestSession>;
}

/** How to freeze: `auto` lets the runtime choose (the agent's freeze through `qga`, else its own). */
export type FreezeMethod = 'auto' | 'fsfreeze' | 'agent' | 'none';

/** A VM's `guest:` key of the job file, with paths resolved and credentials read. */
export interface GuestOptions {
  /** `linux`, `windows`: the runtime's registered name. */
  os: string;
  /** `ssh` or `qga` (the QEMU guest agent's JSON protocol on a unix socket). */
  via: 'ssh' | 'qga' | string;
  /**
   * The guest agent (for `via: qga`, or `freeze: agent` over `ssh`): its socket, `unix:PATH` (the
   * job's `agent:`, or one the source host knows), or since core API 1.2 a `GuestAgentChannel` the
   * source host hands over when it alone holds the socket (libvirt). A runtime accepts both.
   */
  agent?: string | GuestAgentChannel;
  host?: string;
  port?: number;
  user?: string;
  credentials: GuestCredentials;
  freeze: FreezeMethod;
  /** File systems (mount points; Windows: volumes) to freeze. Missing: every local file system the guest has mounted. */
  mounts?: string[];
  /** User scripts as absolute paths on the backup server; the runtime copies them into the guest. */
  scripts: { preFreeze?: string; postThaw?: string; postBackup?: string };
  /** Applications to quiesce, in order: `postgresql`, `mysql`, ..., with their connection options. */
  applications: GuestApplication[];
  /** Windows VSS: `full` (writers may truncate logs after success) or `copy` (no writer side effects). */
  vssMode?: 'full' | 'copy';
  /** Upper bound of each step, and the watchdog's delay before it thaws by itself. */
  timeoutSeconds: number;
}

/**
 * Since core API 1.2: a QEMU guest agent reached through the source host (`SourceHost.guestAgent`)
 * instead of a socket, e.g. libvirt's `virsh qemu-agent-command`, for a VM whose agent socket the
 * host's own daemon holds. The host keeps the agent's protocol state (it syncs the channel
 * itself): `execute` sends one command and resolves with the agent's `return` value.
 *
 * Invariants a host keeps: `execute` is bounded by `timeoutMs` (default 30 s); it rejects with a
 * `FerryError` naming the VM and the command: `GUEST_UNREACHABLE` when the agent is not connected or
 * not running, `GUEST_TIMEOUT` when it did not answer in time, `GUEST_STEP_FAILED` for the agent's
 * own error reply. Calls may run one after another; the runtime never sends two at once. The
 * channel needs no closing (the host releases it with the session).
 */
export interface GuestAgentChannel {
  /** For the report, e.g. `qga libvirt:qemu:///system domain web01`. */
  readonly label: string;
  execute(command: string, args?: Record<string, unknown>, timeoutMs?: number): Promise<unknown>;
}

export interface GuestCredentials {
  /** Contents of the private key file named by `key:`. */
  privateKey?: Buffer;
  /** Value of the environment variable named by `passwordEnv:`. */
  password?: string;
  /** Contents of the `knownHosts:` file (OpenSSH known_hosts format). */
  knownHosts?: string;
}

/** One `applications:` item: a name, and (from a mapping) its connection options. */
export interface GuestApplication {
  name: string;
  options: Record<string, unknown>;
}

/** What a step did, for the report. Failures are thrown, not returned. */
export interface GuestStepResult {
  /** One line: what was done (for example `fsfreeze of /, /var` or `VSS copy snapshot set`). */
  detail?: string;
  /** Per application quiesced, resumed or post-processed in this step. */
  applications?: ApplicationOutcome[];
  /** User scripts run in this step. */
  scripts?: ScriptOutcome[];
  /** Things the report shows as warnings (the step still counts as done). */
  warnings?: string[];
  /**
   * The step learned that the point can only be crash-consistent (for example VSS let go of the
   * held writes before the thaw came); the report's `consistency` says `crash`.
   */
  crashConsistent?: boolean;
}

export interface ApplicationOutcome {
  name: string;
  status: 'success' | 'failed' | 'skipped';
  /** How: `CHECKPOINT`, `FLUSH TABLES WITH READ LOCK`, `VSS writer SqlServerWriter`, `log truncation`. */
  method: string;
  detail?: string;
}

export interface ScriptOutcome {
  /** The script as the job names it (file name only: no secrets live in it). */
  script: string;
  exitCode: number | null;
  /** The last bytes of its standard output and error (at most 4 KiB). */
  output: string;
  durationMs: number;
}

export interface GuestSession {
  /** Where the runtime runs, for the report, e.g. `ssh root@db1:22` or `qga unix:/run/vm1-qga.sock`. */
  readonly label: string;
  /** User `preFreeze` script, then application quiescing (held until `postThaw`). */
  preFreeze?(signal?: AbortSignal): Promise<GuestStepResult>;
  freeze(signal?: AbortSignal): Promise<GuestStepResult & { frozen: number }>;
  thaw(signal?: AbortSignal): Promise<GuestStepResult>;
  /** Applications resumed (locks released), then the user `postThaw` script. */
  postThaw?(signal?: AbortSignal): Promise<GuestStepResult>;
  /** The point is committed: post-backup actions (log truncation, the `postBackup` script). */
  afterBackup?(signal?: AbortSignal): Promise<GuestStepResult>;
  /**
   * Byte ranges of the VM's disk `disk` (name and size as the snapshot gives them) that hold swap or
   * a pagefile, as of the snapshot, each area's header page left out so a restored one stays valid.
   * Called after `postThaw`, once per disk; an empty list when the runtime cannot tell which guest
   * disk this is. The session puts them on the disk (`SourceDisk.skipExtents`): they
   * are never read, stored as zeros and counted in `swapBytesSkipped`. `warnings` (in the object form) name swap areas that could not be placed; the
   * report shows them.
   */
  skipExtents?(disk: { name: string; size?: number }): Promise<Extent[] | { extents: Extent[]; warnings?: string[] }>;
  /** Removes the runtime and closes the connection (the session's `remove` step). */
  close(): Promise<void>;
}
