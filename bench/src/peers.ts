import { mkdirSync, promises as fs } from 'node:fs';
import path from 'node:path';
import { installed, measure, type Measured, type RunOptions, type Usage } from './measure.js';

/**
 * The peers Ferry is compared with, each with its own repository in the benchmark's temp folder,
 * credentials from the environment and no network. Each call is one measured process.
 */
export interface PeerTool {
  name: string;
  /** How it is configured, for the table. */
  variant: string;
  /** The Debian package that ships it, for the "not installed" note. */
  debianPackage: string;
  available(): boolean;
  version(): Promise<string>;
  init(): Promise<void>;
  /** Backs up `file` (always the same path, so a second run is the same file changed). */
  backup(file: string): Promise<Usage>;
  /**
   * Restores the newest backup of `file` into `dir` and makes it durable (`durableRestore`), timed
   * together; returns the restored file's path.
   */
  restore(file: string, dir: string): Promise<{ usage: Usage; restored: string }>;
  repo: string;
}

/**
 * A peer's restore and then `sync FILE DIR` (fsync of the restored file and of its folder), measured
 * as one command: neither peer makes its output durable, Ferry's restore does before it reports
 * success, so the peers are timed to the same point (issue 18: "restic restore followed by sync").
 */
export function durableRestore(cmd: string, args: string[], restored: string, opts: RunOptions): Promise<Measured> {
  const env = { ...opts.env, FERRY_BENCH_RESTORED: restored, FERRY_BENCH_RESTORED_DIR: path.dirname(restored) };
  return measure('sh', ['-c', '"$0" "$@" && exec sync -- "$FERRY_BENCH_RESTORED" "$FERRY_BENCH_RESTORED_DIR"', cmd, ...args], { ...opts, env });
}

/** restic: content-defined chunking (~1 MiB average), SHA-256, AES-256 + Poly1305, zstd (`auto`). */
export function restic(work: string): PeerTool {
  const repo = path.join(work, 'restic-repo');
  const env = { RESTIC_PASSWORD: 'ferry-bench', RESTIC_REPOSITORY: repo, RESTIC_CACHE_DIR: path.join(work, 'restic-cache') };
  return {
    name: 'restic',
    variant: 'defaults (CDC, zstd auto, encrypted)',
    debianPackage: 'restic',
    repo,
    available: () => installed('restic'),
    version: async () => (await measure('restic', ['version'], { env })).stdout.trim().split(' ').slice(0, 2).join(' '),
    init: async () => {
      await measure('restic', ['init', '-q'], { env });
    },
    backup: async (file) => measure('restic', ['backup', '-q', '--host', 'bench', file], { env }),
    restore: async (file, dir) => {
      const restored = path.join(dir, file);
      const usage = await durableRestore('restic', ['restore', 'latest', '-q', '--host', 'bench', '--target', dir], restored, { env });
      return { usage, restored };
    },
  };
}

/**
 * borg with the VM-image recipe: fixed 4 MiB chunks, holes detected (`--sparse`), lz4, and no
 * encryption (Ferry does not encrypt either; `repokey` would add AES-CTR + HMAC per chunk).
 */
export function borg(work: string): PeerTool {
  const repo = path.join(work, 'borg-repo');
  const home = path.join(work, 'borg-home');
  const encryption = process.env.FERRY_BENCH_BORG_ENCRYPTION ?? 'none';
  const env = {
    BORG_REPO: repo,
    BORG_BASE_DIR: home,
    BORG_PASSPHRASE: 'ferry-bench',
    BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes',
    BORG_RELOCATED_REPO_ACCESS_IS_OK: 'yes',
  };
  let archive = 0;
  return {
    name: 'borg',
    variant: `fixed,4194304 lz4 --sparse, encryption ${encryption}`,
    debianPackage: 'borgbackup',
    repo,
    available: () => installed('borg'),
    version: async () => (await measure('borg', ['--version'], { env })).stdout.trim(),
    init: async () => {
      mkdirSync(home, { recursive: true });
      await measure('borg', ['init', `--encryption=${encryption}`], { env });
    },
    // Relative path from the image's folder, so `borg extract` recreates just the file name.
    backup: async (file) =>
      measure('borg', ['create', '--chunker-params', 'fixed,4194304', '--compression', 'lz4', '--sparse', `::run${++archive}`, path.basename(file)], {
        env,
        cwd: path.dirname(file),
      }),
    restore: async (file, dir) => {
      await fs.mkdir(dir, { recursive: true });
      const restored = path.join(dir, path.basename(file));
      const usage = await durableRestore('borg', ['extract', '--sparse', `::run${archive}`], restored, { env, cwd: dir });
      return { usage, restored };
    },
  };
}
