import os from 'node:os';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { attachNbdDevice, detachNbdDevice, FerryError, JobRuntime, kernelNbdDevices, startPointServer, type PointServer } from '@ferry/core';
import { EXIT } from '../output.js';
import { cacheBytes, line, waitForSignal } from './serve.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  vm: string;
  disk: string;
  point: string;
  device?: string;
  cache: string;
  json: boolean;
}

/**
 * `ferry mount`: a disk of a restore point as a read-only kernel block device (`/dev/nbdN`), through
 * the kernel's nbd module and nbd-client, until SIGTERM/SIGINT. Where the module is missing it says
 * so (MOUNT_UNAVAILABLE) before anything is served.
 */
export function mountCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.mount,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('disk', { type: 'string', demandOption: true, describe: 'disk name as in the job' })
        .option('point', { type: 'string', default: 'latest', describe: 'restore point id, or latest' })
        .option('device', { type: 'string', describe: 'the /dev/nbdN to use (default: the first free one)' })
        .option('cache', { type: 'string', default: '64MiB', describe: 'read cache of decoded blocks' })
        .option('json', { type: 'boolean', default: false, describe: 'print events as JSON lines' }) as never,
    handler: async (args) => {
      const free = await kernelNbdDevices();
      const device = args.device ?? free[0]!;
      if (args.device && !free.includes(args.device)) throw new FerryError('CLI_USAGE', `${args.device} is not a free NBD device; free: ${free.join(', ')}`);
      // From here on a signal stops the command cleanly, also one that arrives while it starts.
      const stop = waitForSignal();
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      let server: PointServer | undefined;
      let attached = false;
      try {
        const socket = path.join(os.tmpdir(), `ferry-mount-${process.pid}.sock`);
        server = await startPointServer(rt, {
          vm: args.vm,
          point: args.point,
          disks: [args.disk],
          listen: `unix:${socket}`,
          reader: { cacheBytes: cacheBytes(args.cache) },
          log: (l) => process.stderr.write(`ferry mount: ${l}\n`),
        });
        await attachNbdDevice(device, socket, args.disk);
        attached = true;
        if (args.json) line({ event: 'attached', device, readOnly: true, vm: args.vm, disk: args.disk, restorePoint: server.point.id });
        else process.stdout.write(`attached ${args.vm}/${args.disk} at ${server.point.id} to ${device} (read-only); partitions appear as ${device}p1...; stop with Ctrl-C\n`);
        await stop;
      } finally {
        if (attached) await detachNbdDevice(device).catch((err: Error) => process.stderr.write(`ferry mount: detaching ${device}: ${err.message}\n`));
        await server?.close();
        await rt.close();
      }
      setCode(EXIT.ok);
    },
  };
}
