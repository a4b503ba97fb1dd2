import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'chai';
import { skipBecause } from '@ferry/core/testing';
import { loadSeekAddon, type SeekAddon } from './seek-addon.js';

describe('ferry_seek addon', () => {
  let addon: SeekAddon;
  let dir: string;
  let fd: number;

  before(function () {
    const loaded = loadSeekAddon();
    if (!loaded && process.platform !== 'linux') skipBecause(this, `the seek addon is built on Linux only, not ${process.platform}`);
    expect(loaded, 'build/Release/ferry_seek.node did not load; run npm install').to.not.equal(undefined);
    addon = loaded!;
  });
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-seek-'));
    fd = fs.openSync(path.join(dir, 'f'), 'w+');
    fs.ftruncateSync(fd, 1024 * 1024);
    fs.writeSync(fd, Buffer.alloc(4096, 1), 0, 4096, 8192);
  });
  afterEach(() => {
    fs.closeSync(fd);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('uses the Linux values of SEEK_DATA and SEEK_HOLE', function () {
    if (process.platform !== 'linux') skipBecause(this, `SEEK_DATA and SEEK_HOLE values are Linux's, not ${process.platform}'s`);
    expect([addon.SEEK_DATA, addon.SEEK_HOLE]).to.deep.equal([3, 4]);
  });

  it('returns the next data and the next hole', () => {
    expect(addon.seek(fd, 0, addon.SEEK_DATA)).to.equal(8192);
    expect(addon.seek(fd, 8192, addon.SEEK_HOLE)).to.equal(12288);
  });

  it('returns -1 when no data follows or the offset is past the end (ENXIO)', () => {
    expect(addon.seek(fd, 12288, addon.SEEK_DATA)).to.equal(-1);
    expect(addon.seek(fd, 2 * 1024 * 1024, addon.SEEK_HOLE)).to.equal(-1);
  });

  it('throws an Error carrying the errno name otherwise', () => {
    expect(() => addon.seek(-1, 0, addon.SEEK_DATA)).to.throw(Error).with.property('code', 'EBADF');
    expect(() => addon.seek(fd, 0, 99)).to.throw(Error).with.property('code', 'EINVAL');
    expect(() => addon.seek(fd, 'x' as unknown as number, addon.SEEK_DATA)).to.throw(TypeError);
  });
});
