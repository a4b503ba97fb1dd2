import fs from 'node:fs';
import { runTransportConformance } from '@ferry/core/testing';
import { HotaddTransport } from '../hotadd-transport.js';
import { QEMU_TOOLS, qemuImg } from './spec-support/qemu-tools.js';

// The shared transport suite on qcow2 copies of its raw image, made by qemu-img: a plain copy (holes
// become unallocated clusters) and a compressed one. The suite compares every read with the raw bytes.
const copies: [name: string, convertOptions: string[]][] = [
  ['hotadd qcow2', []],
  ['hotadd qcow2, compressed', ['-c']],
];

for (const [name, options] of copies) {
  runTransportConformance(name, async (file) => {
    const image = `${file}.qcow2`;
    qemuImg('convert', '-q', ...options, '-f', 'raw', '-O', 'qcow2', file, image);
    return {
      transport: new HotaddTransport(),
      disk: { name: 'disk.qcow2', path: image, format: 'qcow2' },
      cleanup: async () => fs.rmSync(image, { force: true }),
    };
  }, { needs: QEMU_TOOLS });
}
