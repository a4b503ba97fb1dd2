import { runTransportConformance } from '@ferry/core/testing';
import { HotaddTransport } from './hotadd-transport.js';

// The shared suite every transport passes, once with hole detection and once as on a platform
// without the seek addon (blockStatus left out, every byte read).
runTransportConformance('hotadd', async (file) => ({
  transport: new HotaddTransport(),
  disk: { name: 'disk.raw', path: file, format: 'raw' },
  cleanup: async () => undefined,
}));

runTransportConformance('hotadd without the seek addon', async (file) => ({
  transport: new HotaddTransport({ seek: null }),
  disk: { name: 'disk.raw', path: file, format: 'raw' },
  cleanup: async () => undefined,
}));
