import { readdirSync } from 'node:fs';
import type { JobContext, PreviousPoint, SourceDisk, VmSnapshot } from '@ferry/core/plugin';
// Internal: point ids are the repository's format; the helpers make ones a real session would.
import { Repository } from '@ferry/core';
import { QemuSourceHost } from '../qemu-source-host.js';
import { QmpClient } from '../qmp-client.js';
import { dirtyExtents, nbdUri, readExport, type StorageDaemon } from './storage-daemon.js';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export function jobContext(name: string): JobContext {
  return {
    name,
    file: `/jobs/${name}.yaml`,
    dir: '/jobs',
    where: (p) => ({ file: `/jobs/${name}.yaml`, line: 9, column: 5, path: p.join('.') }),
  };
}

/** VM keys besides `qmp` (e.g. `snapshot: 'auto'`). */
export type VmKeys = Record<string, unknown>;

/** A host for job `job` that has taken the inventory of the daemon's VM. */
export async function openHost(qsd: StorageDaemon, job = 'j', disks?: string[], keys: VmKeys = {}): Promise<QemuSourceHost> {
  const host = new QemuSourceHost(jobContext(job));
  await host.inventory([{ name: qsd.vm, disks, options: { qmp: qsd.qmp, ...keys } }]);
  return host;
}

export interface Taken {
  id: string;
  snap: VmSnapshot;
  disk: SourceDisk;
}

/** Takes a snapshot of the daemon's VM as session `id` would, building on `previous`. */
export async function take(host: QemuSourceHost, qsd: StorageDaemon, job: string, previous?: Taken, keys: VmKeys = {}): Promise<Taken> {
  const id = Repository.newPointId();
  const inv = await host.inventory([{ name: qsd.vm, options: { qmp: qsd.qmp, ...keys } }]);
  const snap = await host.snapshot(inv[0], { job, sessionId: id, previous: previous && pointOf(previous) });
  return { id, snap, disk: snap.disks[0] };
}

/** What the core would hand back as `previous` after committing `t`. */
export function pointOf(t: Taken): PreviousPoint {
  return { id: t.id, disks: t.snap.disks.map((d) => ({ name: d.name, sizeBytes: d.size!, changeTracking: d.changeTracking })) };
}

export function exportUri(d: SourceDisk): string {
  return nbdUri(d.nbd!.address.replace(/^unix:/, ''), d.nbd!.exportName);
}

export function readDisk(d: SourceDisk): Promise<Buffer> {
  return readExport(exportUri(d));
}

/** Dirty extents of the snapshot's exported bitmap. */
export function changed(d: SourceDisk): Promise<{ offset: number; length: number }[]> {
  return dirtyExtents(exportUri(d), d.nbd!.bitmap!);
}

/** What QEMU holds right now: node names, export ids, job ids and the bitmaps of `node`. */
export async function qemuObjects(
  qsd: StorageDaemon,
  node = 'disk0',
): Promise<{ nodes: string[]; exports: string[]; jobs: string[]; bitmaps: { name: string; recording: boolean }[] }> {
  const qmp = await QmpClient.connect(qsd.qmp);
  try {
    const nodes = await qmp.execute<{ 'node-name': string; 'dirty-bitmaps'?: { name: string; recording: boolean }[] }[]>('query-named-block-nodes', {
      flat: true,
    });
    const exports = await qmp.execute<{ id: string }[]>('query-block-exports');
    const jobs = await qmp.execute<{ id: string }[]>('query-jobs');
    return {
      nodes: nodes.map((n) => n['node-name']),
      exports: exports.map((e) => e.id),
      jobs: jobs.map((j) => j.id),
      bitmaps: (nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? []).map((b) => ({ name: b.name, recording: b.recording })),
    };
  } finally {
    await qmp.close();
  }
}

/** Runs one QMP command on the daemon (for specs that play an administrator). */
export async function qmpCommand(qsd: StorageDaemon, command: string, args?: Record<string, unknown>): Promise<unknown> {
  const qmp = await QmpClient.connect(qsd.qmp);
  try {
    return await qmp.execute(command, args);
  } finally {
    await qmp.close();
  }
}

/** Ferry's overlay files (fleecing and external snapshots) in the daemon's folder. */
export function overlayFiles(qsd: StorageDaemon): string[] {
  return readdirSync(qsd.dir).filter((f) => f.startsWith('ferry-fleece-') || f.startsWith('ferry-snap-'));
}
