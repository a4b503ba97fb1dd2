import type { ErrorLocation } from '../errors.js';

/** A key path in the job file: `['source', 'vms', 0, 'disks', 1]`. */
export type DocPath = (string | number)[];

/** What a plugin instance learns about the job it serves (`Tokens.JobContext`). */
export interface JobContext {
  /** The job's name (`job:` key). */
  name: string;
  /** Absolute path of the job file, and its folder (relative paths resolve against it). */
  file: string;
  dir: string;
  /** Location of a key of the job file, for errors: `where(['source','vms',0,'disks',1])`. */
  where(path: DocPath): ErrorLocation;
}
