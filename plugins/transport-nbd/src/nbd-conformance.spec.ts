import path from 'node:path';
import { runTransportConformance } from '@ferry/core/testing';
import { NbdTransport } from './nbd-transport.js';
import { startNbdkit, startQemuNbd, startServer, tempDir } from './test-support/nbd-servers.js';

// The shared suite every transport passes, with the raw image served by each real NBD server
// Ferry meets: qemu-nbd, nbdkit's file plugin, and qemu-storage-daemon's NBD export.

/** Registers the conformance suite; without `tool` every case skips naming its Debian package (fails in CI). */
function conformance(name: string, tool: string, pkg: string, serve: (file: string, socket: string) => Promise<{ exportName: string; stop(): Promise<void> }>): void {
  runTransportConformance(name, async (file) => {
    const tmp = tempDir();
    const socket = path.join(tmp.dir, 'nbd.sock');
    const server = await serve(file, socket).catch((err: unknown) => {
      tmp.remove();
      throw err;
    });
    return {
      transport: new NbdTransport({ replyTimeoutMs: 10_000 }),
      disk: { name: 'disk.raw', nbd: { address: `unix:${socket}`, exportName: server.exportName } },
      cleanup: async () => {
        await server.stop();
        tmp.remove();
      },
    };
  }, { needs: { [tool]: pkg } });
}

conformance('nbd via qemu-nbd', 'qemu-nbd', 'qemu-utils', async (file, socket) => {
  const s = await startQemuNbd(socket, file, { readOnly: true });
  return { exportName: '', stop: () => s.stop() };
});

conformance('nbd via nbdkit file plugin', 'nbdkit', 'nbdkit', async (file, socket) => {
  const s = await startNbdkit(socket, ['file', file], ['--readonly']);
  return { exportName: '', stop: () => s.stop() };
});

conformance('nbd via qemu-storage-daemon', 'qemu-storage-daemon', 'qemu-system-common', async (file, socket) => {
  const s = await startServer(
    'qemu-storage-daemon',
    [
      '--blockdev', `driver=file,node-name=file0,filename=${file},read-only=on`,
      '--blockdev', 'driver=raw,node-name=disk0,file=file0,read-only=on',
      '--nbd-server', `addr.type=unix,addr.path=${socket}`,
      '--export', 'type=nbd,id=exp0,node-name=disk0,name=disk0',
    ],
    { socket },
  );
  return { exportName: 'disk0', stop: () => s.stop() };
});
