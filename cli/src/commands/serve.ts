import { existsSync } from 'node:fs';
import path from 'node:path';
import type { CommandModule } from 'yargs';
import { FerryError, JobRuntime, humanSize, isTargetAddress, parseSize, startPointServer, commitView, type PointServer } from '@ferry/core';
import { EXIT } from '../output.js';
import { VERBS } from './verbs.js';

interface Args {
  job: string;
  vm: string;
  disk: string;
  point: string;
  listen: string;
  writable: boolean;
  overlay?: string;
  'commit-to'?: string;
  force: boolean;
  certs?: string;
  cache: string;
  json: boolean;
}

/** `ferry serve`: one disk of a restore point as an NBD export, until SIGTERM/SIGINT. */
export function serveCommand(setCode: (c: number) => void): CommandModule<object, Args> {
  return {
    ...VERBS.serve,
    builder: (y) =>
      y
        .positional('job', { type: 'string', demandOption: true, describe: 'job file (YAML)' })
        .option('vm', { type: 'string', demandOption: true, describe: 'VM name' })
        .option('disk', { type: 'string', demandOption: true, describe: 'disk name as in the job; also the NBD export name' })
        .option('point', { type: 'string', default: 'latest', describe: 'restore point id, or latest' })
        .option('listen', { type: 'string', demandOption: true, describe: 'unix:PATH or HOST:PORT (port 0: any free port)' })
        .option('writable', { type: 'boolean', default: false, describe: 'accept writes into a copy-on-write overlay beside the repository (never into it)' })
        .option('overlay', { type: 'string', describe: 'overlay folder for --writable (default: a new folder under ~/.cache/ferry/overlays); an existing overlay of this point and disk is served again' })
        .option('commit-to', { type: 'string', describe: 'copy the served view (point + overlay) to a file, block device or nbd:// target while serving' })
        .option('force', { type: 'boolean', default: false, describe: 'with --commit-to: overwrite an existing file or a block device' })
        .option('certs', { type: 'string', describe: 'certificate folder of `ferry certs init`: require TLS (server.crt/.key; clients need a certificate its CA signed)' })
        .option('cache', { type: 'string', default: '64MiB', describe: 'read cache of decoded blocks' })
        .option('json', { type: 'boolean', default: false, describe: 'print events as JSON lines (listening, committed, stopped)' }) as never,
    handler: async (args) => {
      if (args['commit-to'] && !args.writable) throw new FerryError('CLI_USAGE', '--commit-to needs --writable (a read-only export is the point itself: use ferry restore)');
      if (args.overlay && !args.writable) throw new FerryError('CLI_USAGE', '--overlay needs --writable');
      const commitTarget = args['commit-to'] && !isTargetAddress(args['commit-to']) ? path.resolve(args['commit-to']) : undefined;
      // Checked before serving, as restore checks it; the commit itself creates the file exclusively.
      if (commitTarget && !args.force && existsSync(commitTarget)) {
        throw new FerryError('RESTORE_TARGET_EXISTS', `${commitTarget} already exists; pass --force to overwrite it`, { disk: args.disk });
      }
      // From here on a signal stops the command cleanly, also one that arrives while it starts.
      const stop = waitForSignal();
      const rt = await JobRuntime.open(args.job, { sourceMayBeGone: true });
      let server: PointServer | undefined;
      let failed = false;
      let committing: Promise<void> | undefined;
      try {
        server = await startPointServer(rt, {
          vm: args.vm,
          point: args.point,
          disks: [args.disk],
          listen: args.listen,
          writable: args.writable,
          overlay: args.overlay ? path.resolve(args.overlay) : undefined,
          certs: args.certs ? path.resolve(args.certs) : undefined,
          reader: { cacheBytes: cacheBytes(args.cache) },
          log: (line) => process.stderr.write(`ferry serve: ${line}\n`),
        });
        announce(server, args.json);
        const commitTo = args['commit-to'];
        if (commitTo) {
          const to = isTargetAddress(commitTo) ? commitTo : path.resolve(commitTo);
          const d = server.disks[0]!;
          committing = commitView(rt, d.image, { vm: args.vm, disk: args.disk, to, force: args.force })
            .then((report) => {
              if (args.json) line({ event: 'committed', ...report });
              else process.stdout.write(`committed ${args.vm}/${args.disk} (point ${server!.point.id} + overlay) to ${report.to}: ${humanSize(report.sizeBytes)} in ${(report.durationMs / 1000).toFixed(1)} s, ${report.passes} pass(es); still serving\n`);
            })
            .catch((err: unknown) => {
              if (args.json) line({ event: 'commit-failed', error: err instanceof FerryError ? err.toJSON() : { code: 'INTERNAL', message: String(err) } });
              else process.stderr.write(`ferry serve: the commit failed: ${(err as Error).message}\n`);
              failed = true;
            });
          await Promise.race([committing, stop]);
        }
        const sig = await stop;
        process.stderr.write(`ferry serve: ${sig}: stopping\n`);
      } finally {
        await server?.close();
        // A commit still running when the export stops fails (its target is reported as it is).
        await committing;
        await rt.close();
      }
      if (args.json) line({ event: 'stopped' });
      setCode(failed ? EXIT.failed : EXIT.ok);
    },
  };
}

export function announce(server: PointServer, json: boolean): void {
  if (json) {
    line({
      event: 'listening',
      address: server.address,
      tls: server.tls,
      vm: server.point.vm,
      restorePoint: server.point.id,
      exports: server.disks.map((d) => ({ name: d.name, disk: d.disk, sizeBytes: d.sizeBytes, uri: d.uri, writable: d.writable, ...(d.overlay && { overlay: d.overlay }) })),
    });
    return;
  }
  process.stdout.write(`listening on ${server.address}${server.tls ? ' (TLS required)' : ''}\n`);
  for (const d of server.disks) {
    process.stdout.write(
      `export ${JSON.stringify(d.name)}: ${server.point.vm}/${d.disk} at ${server.point.id}, ${humanSize(d.sizeBytes)}, ${d.writable ? `writable (overlay ${d.overlay})` : 'read-only'}: ${d.uri}\n`,
    );
  }
}

export function cacheBytes(v: string): number {
  const n = parseSize(v);
  if (n === undefined || n < 1024 * 1024) throw new FerryError('CLI_USAGE', `--cache ${JSON.stringify(v)} is not a size of at least 1MiB (e.g. 256MiB)`);
  return n;
}

export function line(v: unknown): void {
  process.stdout.write(JSON.stringify(v) + '\n');
}

/** Resolves with the first SIGTERM or SIGINT. */
export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    process.once('SIGTERM', () => resolve('SIGTERM'));
    process.once('SIGINT', () => resolve('SIGINT'));
  });
}
