import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

/**
 * One file of a cache folder under the cache root (validators, job values): a first line
 * `// sha256 <hex of the rest>`, then the body. A file is used only when it belongs to this user, no
 * one else may write it and its line matches; anything else reads as missing (the caller computes
 * the value again), never as an error.
 */
export function readCacheFile(file: string): string | undefined {
  try {
    const st = statSync(file);
    if ((process.getuid && st.uid !== process.getuid()) || (st.mode & 0o022) !== 0) return undefined;
    const text = readFileSync(file, 'utf8');
    const nl = text.indexOf('\n');
    const body = text.slice(nl + 1);
    if (nl < 0 || text.slice(0, nl) !== `// sha256 ${createHash('sha256').update(body).digest('hex')}`) return undefined;
    return body;
  } catch {
    return undefined;
  }
}

/**
 * Writes `body` as `file` (a temporary name, then rename: a reader sees the old file or the whole
 * new one), in a folder only this user may enter, then removes the oldest files with the same
 * extension beyond `keep`. Best effort: a cache that cannot be written costs the next run time only.
 */
export function writeCacheFile(file: string, body: string, keep: number): void {
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    writeFileSync(tmp, `// sha256 ${createHash('sha256').update(body).digest('hex')}\n${body}`, { mode: 0o600 });
    renameSync(tmp, file);
    prune(path.dirname(file), path.extname(file), keep);
  } catch {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // nothing was written
    }
  }
}

/** Only after a new file: the oldest beyond `keep` go (a later run needing one computes it again). */
function prune(dir: string, ext: string, keep: number): void {
  const files = readdirSync(dir).filter((f) => f.endsWith(ext));
  if (files.length <= keep) return;
  const dated = files.map((f) => ({ f, t: statSync(path.join(dir, f)).mtimeMs })).sort((a, b) => a.t - b.t);
  for (const { f } of dated.slice(0, files.length - keep)) rmSync(path.join(dir, f), { force: true });
}
