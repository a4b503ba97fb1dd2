/**
 * `@ferry/core/restore`: what `ferry restore` needs, without the rest of the core index (backup
 * sessions, serving, file restore, disk formats, maintenance, the remote services), as
 * `@ferry/core/backup` is for `ferry backup`. `--define` (a whole VM) loads `restoreVm` when used.
 */
import 'reflect-metadata';

export { FerryError } from './errors.js';
export { JobRuntime } from './session/job-runtime.js';
export { restoreDisk, type RestoreOptions, type RestoreReport } from './session/restore-session.js';
export { isTargetAddress } from './session/restore-sink.js';
export { humanSize } from './job/size.js';
