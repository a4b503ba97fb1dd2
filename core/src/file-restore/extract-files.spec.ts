import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { FerryError, isFerryError } from '../errors.js';
import type { FileData, FileStat, FileSystem, FileType } from '../disk-formats/file-system.js';
import { extractFiles } from './extract-files.js';

interface Node {
  type: FileType;
  mode?: number;
  data?: string;
  target?: string;
  children?: Record<string, Node>;
}

/** A file system held in memory: lets a test give names no real mkfs would write ('..', 'a/b'). */
class MemoryFs implements FileSystem {
  readonly kind = 'ext4';
  constructor(private readonly root: Node) {}

  private find(p: string): Node {
    let n = this.root;
    for (const part of p.split('/').filter(Boolean)) {
      const next = n.children?.[part];
      if (!next) throw new FerryError('DISK_PATH_NOT_FOUND', `no ${p}`);
      n = next;
    }
    return n;
  }

  private statOf(name: string, n: Node): FileStat {
    const size = n.type === 'file' ? Buffer.byteLength(n.data ?? '') : n.type === 'symlink' ? n.target!.length : 0;
    const t = 1_500_000_000_000 + size * 1000;
    return { name, type: n.type, size, mode: n.mode ?? (n.type === 'dir' ? 0o755 : 0o644), uid: 0, gid: 0, mtimeMs: t, atimeMs: t, ctimeMs: t, links: 1, id: 0 };
  }

  async stat(p: string): Promise<FileStat> {
    return this.statOf(p.split('/').filter(Boolean).pop() ?? '/', this.find(p));
  }
  async list(p: string): Promise<FileStat[]> {
    return Object.entries(this.find(p).children ?? {}).map(([k, v]) => this.statOf(k, v));
  }
  async readLink(p: string): Promise<string> {
    return this.find(p).target!;
  }
  async *readFile(p: string): AsyncGenerator<FileData> {
    const data = Buffer.from(this.find(p).data ?? '');
    if (data.length) yield { offset: 0, data };
  }
}

describe('extractFiles: never writes outside the target folder', function () {
  let dir: string;
  let to: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-extract-'));
    to = path.join(dir, 'to');
    mkdirSync(to);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const evil = new MemoryFs({
    type: 'dir',
    children: {
      top: {
        type: 'dir',
        mode: 0o750,
        children: {
          ok: { type: 'file', data: 'fine', mode: 0o640 },
          '..': { type: 'file', data: 'escape' },
          'a/b': { type: 'file', data: 'slash' },
          inside: { type: 'symlink', target: 'ok' },
          sibling: { type: 'symlink', target: '../top/ok' },
          climbs: { type: 'symlink', target: '../../outside' },
          absolute: { type: 'symlink', target: '/etc/passwd' },
          fifo: { type: 'other' },
        },
      },
    },
  });

  it('skips unsafe names and links as FS_UNSAFE_NAME and extracts the rest with modes and times', async function () {
    const r = await extractFiles(evil, '/top', to);
    expect(r.skipped.map((s) => [s.path, s.code]).sort()).to.deep.equal(
      [
        ['/top/..', 'FS_UNSAFE_NAME'],
        ['/top/a/b', 'FS_UNSAFE_NAME'],
        ['/top/absolute', 'FS_UNSAFE_NAME'],
        ['/top/climbs', 'FS_UNSAFE_NAME'],
        ['/top/fifo', 'DISK_FORMAT_UNSUPPORTED'],
      ].sort(),
    );
    expect(r).to.include({ files: 1, dirs: 1, symlinks: 2 });
    expect(readFileSync(path.join(to, 'top/ok'), 'utf8')).to.equal('fine');
    expect(statSync(path.join(to, 'top/ok')).mode & 0o7777).to.equal(0o640);
    expect(statSync(path.join(to, 'top')).mode & 0o7777).to.equal(0o750);
    expect(statSync(path.join(to, 'top/ok')).mtimeMs).to.equal(1_500_000_004_000);
    expect(readlinkSync(path.join(to, 'top/sibling'))).to.equal('../top/ok');
    expect(readdirNames(to)).to.deep.equal(['top']);
    expect(readdirNames(dir)).to.deep.equal(['to']);
  });

  it('does not follow a link already in the target: RESTORE_TARGET_EXISTS, and --force replaces the link', async function () {
    const outside = path.join(dir, 'outside');
    mkdirSync(outside);
    symlinkSync(outside, path.join(to, 'top'));
    const err = await extractFiles(evil, '/top', to).catch((e: unknown) => e);
    expect(isFerryError(err, 'RESTORE_TARGET_EXISTS')).to.equal(true);
    expect(readdirNames(outside)).to.deep.equal([]);
    await extractFiles(evil, '/top', to, { force: true });
    expect(lstatSync(path.join(to, 'top')).isDirectory()).to.equal(true);
    expect(readdirNames(outside)).to.deep.equal([]);
  });

  it('refuses to replace an existing file without force and replaces it with', async function () {
    writeFileSync(path.join(to, 'ok'), 'mine');
    const err = await extractFiles(evil, '/top/ok', to).catch((e: unknown) => e);
    expect(isFerryError(err, 'RESTORE_TARGET_EXISTS')).to.equal(true);
    expect(readFileSync(path.join(to, 'ok'), 'utf8')).to.equal('mine');
    await extractFiles(evil, '/top/ok', to, { force: true });
    expect(readFileSync(path.join(to, 'ok'), 'utf8')).to.equal('fine');
  });

  it('creates a missing target folder, refuses a target that is a file', async function () {
    await extractFiles(evil, '/top/ok', path.join(dir, 'new/folder'));
    expect(readFileSync(path.join(dir, 'new/folder/ok'), 'utf8')).to.equal('fine');
    writeFileSync(path.join(dir, 'plain'), 'x');
    const err = await extractFiles(evil, '/top', path.join(dir, 'plain')).catch((e: unknown) => e);
    expect(isFerryError(err, 'RESTORE_TARGET')).to.equal(true);
    const missing = await extractFiles(evil, '/nope', path.join(dir, 'not-made')).catch((e: unknown) => e);
    expect(isFerryError(missing, 'DISK_PATH_NOT_FOUND')).to.equal(true);
    expect(existsSync(path.join(dir, 'not-made'))).to.equal(false);
  });
});

function readdirNames(p: string): string[] {
  return readdirSync(p).sort();
}
