import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { FerryError, JobRuntime, qemuCommandLine, qemuDisks, shellQuote, startPointServer, type PointServer, type QemuTls } from '@ferry/core';
import { EXIT } from '../output.js';
import { announce, cacheBytes, line, waitForSignal } from './serve.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  vm: string;
  point: string;
  qmp?: string;
  print?: boolean;
  listen?: string;
  overlay?: string;
  certs?: string;
  cache: string;
  json: boolean;
}

/**
 * `ferry instant-recover`: every disk of a restore point as a writable NBD export (writes in
 * overlays, never in the repository), added as blockdevs to a running QEMU or qemu-storage-daemon
 * over QMP, or printed as a QEMU command line; serves until SIGTERM/SIGINT.
 */
export function instantRecoverCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS['instant-recover'],
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('point', { type: 'string', default: 'latest', describe: 'restore point id, or latest' })
        .option('qmp', { type: 'string', describe: 'QMP socket of a running QEMU or qemu-storage-daemon (unix:PATH or tcp:HOST:PORT): the disks are added as blockdevs' })
        .option('print', { type: 'boolean', describe: 'print a complete QEMU command line that boots from the exports' })
        .option('listen', { type: 'string', describe: 'unix:PATH or HOST:PORT for the exports (default: a unix socket in the temp folder)' })
        .option('overlay', { type: 'string', describe: 'folder for the overlays, one subfolder per disk (default: under ~/.cache/ferry/overlays)' })
        .option('certs', { type: 'string', describe: 'certificate folder of `ferry certs init`: TLS required; QEMU gets a tls-creds-x509 object' })
        .option('cache', { type: 'string', default: '64MiB', describe: 'read cache of decoded blocks, per disk' })
        .option('json', { type: 'boolean', default: false, describe: 'print events as JSON lines' })
        .conflicts('qmp', 'print') as never,
    handler: async (args) => {
      if (!args.qmp && !args.print) throw new FerryError('CLI_USAGE', 'name where the disks go: --qmp unix:PATH (a running QEMU) or --print (a QEMU command line)');
      // From here on a signal stops the command cleanly, also one that arrives while it starts.
      const stop = waitForSignal();
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      let server: PointServer | undefined;
      let tls: QemuTls | undefined;
      let detach: (() => Promise<void>) | undefined;
      try {
        const listen = args.listen ?? `unix:${path.join(os.tmpdir(), `ferry-recover-${args.vm.replace(/[^A-Za-z0-9._-]/g, '_')}-${process.pid}.sock`)}`;
        server = await startPointServer(rt, {
          vm: args.vm,
          point: args.point,
          listen,
          writable: true,
          overlay: args.overlay ? path.resolve(args.overlay) : undefined,
          certs: args.certs ? path.resolve(args.certs) : undefined,
          reader: { cacheBytes: cacheBytes(args.cache) },
          log: (l) => process.stderr.write(`ferry instant-recover: ${l}\n`),
        });
        if (args.certs) tls = qemuTlsDir(path.resolve(args.certs));
        if (args.qmp) detach = await attach(args.qmp, server, tls);
        announce(server, args.json);
        const disks = qemuDisks(server, tls);
        if (args.print) {
          const argv = qemuCommandLine(server, tls);
          if (args.json) line({ event: 'qemu', argv, command: argv.map(shellQuote).join(' ') });
          else process.stdout.write(`${argv.map(shellQuote).join(' ')}\n`);
        } else if (args.json) line({ event: 'attached', qmp: args.qmp, nodes: disks.map((d) => ({ disk: d.disk, node: d.node })) });
        else process.stdout.write(`attached to ${args.qmp}: ${disks.map((d) => `${d.disk} as blockdev ${d.node}`).join(', ')} (device_add virtio-blk-pci,drive=NODE to give them to the guest)\n`);
        const sig = await stop;
        process.stderr.write(`ferry instant-recover: ${sig}: stopping\n`);
      } finally {
        await detach?.().catch((err: Error) => process.stderr.write(`ferry instant-recover: detaching from QEMU: ${err.message}\n`));
        await server?.close();
        await rt.close();
        if (tls) rmSync(tls.dir, { recursive: true, force: true });
      }
      if (args.json) line({ event: 'stopped' });
      setCode(EXIT.ok);
    },
  };
}

/**
 * Adds a blockdev per disk (and the TLS credentials object) over QMP, then lets go of the monitor
 * (it serves one client at a time). The returned function removes them again at the end; a node a
 * device still uses stays, and the message says so.
 */
async function attach(qmp: string, server: PointServer, tls?: QemuTls): Promise<() => Promise<void>> {
  // Loaded here: the other commands never need the QEMU plugin's code.
  const { QmpClient } = await import('@ferry/source-qemu');
  const disks = qemuDisks(server, tls);
  const added: string[] = [];
  let objectAdded = false;
  const remove = async (): Promise<void> => {
    const c = await QmpClient.connect(qmp);
    try {
      for (const node of added.reverse()) {
        await c.execute('blockdev-del', { 'node-name': node }).catch((err: Error) => process.stderr.write(`ferry instant-recover: blockdev ${node} stays: ${err.message}\n`));
      }
      if (objectAdded) await c.execute('object-del', { id: tls!.id }).catch(() => undefined);
    } finally {
      await c.close();
    }
  };
  const c = await QmpClient.connect(qmp);
  try {
    if (tls) {
      await c.execute('object-add', { 'qom-type': 'tls-creds-x509', id: tls.id, dir: tls.dir, endpoint: 'client' });
      objectAdded = true;
    }
    for (const d of disks) {
      await c.execute('blockdev-add', d.blockdev);
      added.push(d.node);
    }
  } catch (err) {
    await c.close();
    await remove().catch(() => undefined);
    throw err;
  }
  await c.close();
  return remove;
}

/** QEMU's tls-creds-x509 folder layout from a `ferry certs init` folder: QEMU connects with the `server` identity. */
function qemuTlsDir(certs: string): QemuTls {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-recover-tls-'));
  copyFileSync(path.join(certs, 'ca.crt'), path.join(dir, 'ca-cert.pem'));
  copyFileSync(path.join(certs, 'server.crt'), path.join(dir, 'client-cert.pem'));
  copyFileSync(path.join(certs, 'server.key'), path.join(dir, 'client-key.pem'));
  return { id: 'ferry-tls', dir, hostname: 'server' };
}
