/**
 * Every user-facing error Ferry raises carries a code from this one table and says where it happened.
 * `docs/errors.md` lists the same table; a spec fails when the two drift apart.
 */
export const ERROR_CODES = {
  // job files
  JOB_FILE_NOT_FOUND: 'the job file does not exist or cannot be read',
  JOB_YAML_SYNTAX: 'the job file is not well-formed YAML',
  JOB_INVALID: 'a key of the job file is unknown, missing or of the wrong type or value (a VM listed twice, a disk outside the datastore), or the file is over 1 MiB or its YAML aliases expand too far',
  JOB_PATH_NOT_FOUND: 'a file or folder the job names does not exist',
  // plugins
  PLUGIN_MANIFEST_INVALID: "a plugin package's package.json is not valid JSON, its `ferry` field is malformed, or `ferry.entry` names a file that does not exist",
  PLUGIN_API_INCOMPATIBLE: 'a plugin targets a core API version this core does not support',
  PLUGIN_DUPLICATE: 'two plugin packages have the same name or provide the same kind and name',
  PLUGIN_NOT_FOUND: 'the job names a plugin implementation that no discovered package provides',
  PLUGIN_LOAD_FAILED: "a plugin's entry module could not be imported or its register hook threw",
  PLUGIN_CONTRACT: 'a plugin registered something other than what its package.json declares, an implementation lacks a member its kind requires (a transport without open, a disk handle without read), or a hook returned what its contract does not allow (a block filter verdict other than keep or zero)',
  PLUGIN_FAILED: 'a plugin hook threw an error while a job ran',
  // guest processing
  GUEST_UNREACHABLE: "the guest (over SSH, its QEMU guest agent socket, or the source host's agent channel) cannot be reached or refused the credentials",
  GUEST_HOST_KEY: "the guest's SSH host key is not in the job's knownHosts file or differs from it: the connection was refused",
  GUEST_STEP_FAILED: 'a guest processing step failed (a script exited non-zero, quiescing or freezing failed), naming the VM and the step',
  GUEST_TIMEOUT: "a guest processing step took longer than the VM's guest.timeoutSeconds and was stopped",
  // source hosts and transports
  SOURCE_VM_NOT_FOUND: 'the source host does not know the VM the job names',
  SOURCE_DISK_NOT_FOUND: 'the source host does not know the disk the job names',
  SOURCE_UNREACHABLE: 'the source host cannot be reached',
  SOURCE_COMMAND_FAILED: 'a command the source host runs failed, timed out or answered what cannot be parsed (a libvirt `virsh` call: the message names the command and the domain)',
  TRANSPORT_UNAVAILABLE: 'no transport mode can read the disk from this proxy',
  TRANSPORT_READ_FAILED: 'reading the disk through the transport failed',
  TRANSPORT_UNSUPPORTED_FORMAT: 'the transport cannot read this disk image format',
  // repository
  REPO_NOT_A_REPOSITORY: 'the repository location holds something that is not a Ferry repository',
  REPO_FORMAT_UNSUPPORTED: 'the repository was written by an incompatible format version',
  REPO_IO: 'the repository backend failed to read or write an object',
  REPO_OBJECT_NOT_FOUND: 'an object the repository needs is missing',
  REPO_CORRUPT_OBJECT: 'a stored object fails its checksum or is malformed',
  REPO_POINT_NOT_FOUND: 'the restore point asked for does not exist',
  REPO_LOCKED: 'another live process holds a conflicting lock on the repository',
  REPO_LOCK_LOST: "this process's repository lock was removed or went stale, so it stopped before committing",
  REPO_PASSPHRASE_REQUIRED: 'the repository is encrypted and no passphrase was given (or it is empty)',
  REPO_WRONG_PASSPHRASE: "the passphrase opens none of the encrypted repository's key objects",
  REPO_SETTINGS_MISMATCH: "the job's encryption or immutability settings differ from what the repository was created with",
  REPO_IMMUTABLE: 'the restore point is inside its immutability period and cannot be deleted or replaced',
  REPO_OBJECT_LOCK: 'the repository asks for S3 Object Lock (objectLock: required) and the bucket does not have it enabled, or the store does not support it',
  REPO_OBJECT_EXISTS: 'an object that is written once exists already (a committed object is never replaced)',
  // repository maintenance
  VERIFY_DAMAGED: 'the health check found damaged or missing blocks, block maps or manifests',
  GC_UNSAFE: 'garbage collection stopped because it cannot tell for certain which blocks are needed',
  // sessions
  BACKUP_DISK_FAILED: 'a disk of the session could not be backed up',
  SESSION_INTERRUPTED: 'the session was stopped (Ctrl-C, SIGTERM) and cleaned up; nothing unfinished was committed',
  WORKER_FAILED: 'a worker thread of the data pipe died (exited, or threw outside a task); its blocks and every later one fail instead of waiting',
  RESTORE_TARGET: 'the restore target cannot be written',
  RESTORE_TARGET_EXISTS: 'the restore target is an existing file or a block device, and --force was not given; or (`restore --define`) the source host has a VM of that name already',
  RESTORE_NOT_FOUND: 'the VM or disk asked for is not in the restore point, or (`restore --define`) the point holds no VM definition the source host can use',
  FS_UNSAFE_NAME: "extracting would write outside the target folder (a name with '/', '..' or NUL, or a symlink that points out of it); nothing was written for that entry",
  READ_OUT_OF_RANGE: 'a read of a served or opened restore point asked for bytes beyond the end of its disk',
  SERVE_LISTEN: '`ferry serve` or `ferry instant-recover` cannot listen on the address given (in use, malformed, not permitted)',
  SERVE_OVERLAY: "a writable export's overlay folder cannot be created, read or written, or it belongs to another restore point or disk",
  MOUNT_UNAVAILABLE: "`ferry mount` cannot attach a block device here: the kernel's nbd module is not loaded and cannot be loaded, nbd-client is missing, no /dev/nbdN is free, or nbd-client failed",
  RESTORE_INCOMPLETE: 'a restore ended without every block of the block map written (a repository service that skipped one); the target is incomplete',
  // data pipe between the data movers
  PIPE_PROTOCOL: 'a data-pipe peer sent something that is not a valid frame or message (garbage, bad CRC-32, oversize frame, out of order, a header that does not match its verb: the message names verb and field)',
  PIPE_VERSION: 'a data-pipe peer speaks no frame format or protocol version this side supports',
  PIPE_AUTH: 'a data-pipe peer was not authenticated (no TLS, unknown CA, bad certificate or pre-shared key) or has a role it is not allowed',
  PIPE_TIMEOUT: 'a data-pipe peer did not answer in time (TLS handshake, HELLO, or three missed heartbeats)',
  PIPE_CLOSED: 'the data-pipe connection ended while it was in use (peer left without goodbye, or closed locally)',
  PIPE_UNREACHABLE: 'the data-pipe peer cannot be reached at its address',
  CERTS_FAILED: 'a certificate folder cannot be written or read (files already there without --force, files missing, openssl missing or failed)',
  // data-mover services
  REMOTE_RESUME_FAILED: 'the data pipe to a proxy, or a restore\'s connection to the repository service, dropped (or never came up) and could not be resumed within the retry window',
  REMOTE_SESSION_LOST: 'the repository service went away during the session; nothing unfinished was committed',
  REMOTE_BLOCK_MISMATCH: 'a proxy sent a block whose content does not match the id (SHA-256, or HMAC of an encrypted repository) it names; nothing was stored for it',
  REMOTE_PLUGIN_OPTIONS: "a proxy's own version of a transport or block filter does not accept the options the job gives it (a key its configSchema does not know, a value of the wrong type, a path that does not exist on the proxy host); the message names proxy, plugin and key",
  // disk formats (partition tables, swap areas, file systems read from a disk image)
  DISK_FORMAT_INVALID: 'a partition table, swap header or file system on the disk is malformed (bad signature or checksum, a field out of range, a structure past the end of the disk): the message names the structure and its byte offset',
  DISK_FORMAT_UNSUPPORTED: 'a structure on the disk is well-formed but uses a feature Ferry cannot read (for example a compressed or encrypted NTFS file)',
  DISK_PATH_NOT_FOUND: 'a path looked up inside a file system on the disk does not exist or is not of the kind asked for (a file where a directory was expected)',
  CLI_USAGE: 'the command line is missing an argument or has a wrong one',
  INTERNAL: 'an unexpected internal error; please report it',
} as const;

export type ErrorCode = keyof typeof ERROR_CODES;

/** Where an error happened; every field is optional, the message names those present. */
export interface ErrorLocation {
  file?: string;
  line?: number;
  column?: number;
  /** Path inside the YAML document, for example `source.vms[0].disks[1]`. */
  path?: string;
  plugin?: string;
  hook?: string;
  host?: string;
  vm?: string;
  disk?: string;
  offset?: number;
  object?: string;
}

export class FerryError extends Error {
  readonly code: ErrorCode;
  readonly where: ErrorLocation;
  readonly detail: string;

  constructor(code: ErrorCode, detail: string, where: ErrorLocation = {}, options?: { cause?: unknown }) {
    super(formatMessage(code, detail, where), options);
    this.name = 'FerryError';
    this.code = code;
    this.detail = detail;
    this.where = where;
  }

  /** A copy with more location facts; facts already known win over the new ones. */
  at(where: ErrorLocation): FerryError {
    return new FerryError(this.code, this.detail, { ...where, ...this.where }, { cause: this.cause });
  }

  toJSON(): { code: ErrorCode; message: string; where: ErrorLocation } {
    return { code: this.code, message: this.message, where: this.where };
  }
}

function formatMessage(code: ErrorCode, detail: string, w: ErrorLocation): string {
  const parts: string[] = [];
  if (w.file !== undefined) {
    let pos = w.file;
    if (w.line !== undefined) pos += `:${w.line}`;
    if (w.line !== undefined && w.column !== undefined) pos += `:${w.column}`;
    parts.push(pos);
  }
  if (w.path) parts.push(`at ${w.path}`);
  if (w.plugin) parts.push(`plugin ${w.plugin}${w.hook ? ` (${w.hook})` : ''}`);
  if (w.host) parts.push(`host ${w.host}`);
  if (w.vm) parts.push(`vm ${w.vm}`);
  if (w.disk) parts.push(`disk ${w.disk}`);
  if (w.offset !== undefined) parts.push(`offset ${w.offset}`);
  if (w.object) parts.push(`object ${w.object}`);
  return `${code}: ${detail}${parts.length ? ` [${parts.join(', ')}]` : ''}`;
}

/** Wraps anything thrown by plugin code so the message names the plugin and hook. */
export function pluginError(err: unknown, plugin: string, hook: string, where: ErrorLocation = {}): FerryError {
  if (err instanceof FerryError) return err.at({ ...where, plugin, hook });
  const msg = err instanceof Error ? err.message : String(err);
  return new FerryError('PLUGIN_FAILED', msg, { ...where, plugin, hook }, { cause: err });
}

export function isFerryError(err: unknown, code?: ErrorCode): err is FerryError {
  return err instanceof FerryError && (code === undefined || err.code === code);
}

/** An error as the report carries it: code, full message, and where it happened. */
export interface ReportedError {
  code: ErrorCode;
  message: string;
  where: ErrorLocation;
}
