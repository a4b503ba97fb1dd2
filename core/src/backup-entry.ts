/**
 * `@ferry/core/backup`: what `ferry backup` needs, without the rest of the core index (restore,
 * serving, file restore, disk formats, maintenance, the remote services): a command loads about
 * half the modules it would through `@ferry/core`.
 */
import 'reflect-metadata';

export { JobRuntime } from './session/job-runtime.js';
export { runBackup, type BackupOptions } from './session/backup-session.js';
export { humanSize } from './job/size.js';
export type { GuestReport, ProgressEvent, SessionReport } from './report/session-report.js';
