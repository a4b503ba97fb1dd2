import { expect } from 'chai';
import { formatSize, parseSize } from './size.js';

describe('sizes', function () {
  it('parses binary units, plain numbers and refuses nonsense', function () {
    expect(parseSize('1MiB')).to.equal(1048576);
    expect(parseSize('256KiB')).to.equal(262144);
    expect(parseSize('4M')).to.equal(4194304);
    expect(parseSize(' 8 mib ')).to.equal(8388608);
    expect(parseSize(65536)).to.equal(65536);
    expect(parseSize('1.5KiB')).to.equal(1536);
    for (const bad of ['big', '-1MiB', '1 parsec', '', [1], -5, 1.5]) expect(parseSize(bad), String(bad)).to.equal(undefined);
  });

  it('formats whole units', function () {
    expect(formatSize(1048576)).to.equal('1MiB');
    expect(formatSize(3 * 1048576)).to.equal('3MiB');
    expect(formatSize(1000)).to.equal('1000B');
  });
});
