import { promises as fs } from 'node:fs';
import path from 'node:path';
import type { DefinedVm } from '../contracts/source-host.js';
import { FerryError } from '../errors.js';
import { sortPoints, type RestorePoint } from '../repository/repository.js';
import type { JobRuntime } from './job-runtime.js';
import { listRemotePoints } from './remote-restore.js';
import { restoreDisk, type RestoreReport } from './restore-session.js';

export interface RestoreVmOptions {
  vm: string;
  /** Restore point id, or `latest`. */
  point: string;
  /** Folder the disks are restored into (created when missing): `<name>-<disk>.raw` each. */
  toDir: string;
  /** Name of the VM to define on the job's source host. */
  define: string;
  force?: boolean;
}

export interface RestoreVmReport {
  vm: string;
  restorePoint: string;
  defined: DefinedVm;
  disks: RestoreReport[];
}

/**
 * `ferry restore --define NAME`: every disk of the point restored into a folder, then a new VM
 * defined on the job's source host from the definition the point saved, its disks at the restored
 * files. The host must be able to define VMs and the point must hold a definition; both are checked
 * before a byte is written.
 */
export async function restoreVm(rt: JobRuntime, opts: RestoreVmOptions): Promise<RestoreVmReport> {
  const host = await rt.sourceHost();
  if (!host.defineVm) {
    throw new FerryError('CLI_USAGE', `--define needs a source host that defines VMs; ${rt.spec.source.host} does not (restore each disk with --disk and --to)`, { vm: opts.vm });
  }
  const point = await findPoint(rt, opts.vm, opts.point);
  if (!point.definition) {
    throw new FerryError('RESTORE_NOT_FOUND', `restore point ${point.id} of vm ${opts.vm} holds no VM definition (its source host saved none), so --define cannot make a VM of it`, { vm: opts.vm });
  }
  const files = point.disks.map((d) => ({ name: d.name, path: path.join(opts.toDir, `${opts.define}-${d.name.replace(/[/\\]/g, '_')}.raw`), format: 'raw' }));
  await host.defineVm(point.definition, { name: opts.define, disks: files, dryRun: true });
  await fs.mkdir(opts.toDir, { recursive: true });
  const disks: RestoreReport[] = [];
  for (const f of files) disks.push(await restoreDisk(rt, { vm: opts.vm, disk: f.name, point: point.id, to: f.path, force: opts.force }));
  const defined = await host.defineVm(point.definition, { name: opts.define, disks: disks.map((r) => ({ name: r.disk, path: r.to, format: 'raw' })) });
  return { vm: opts.vm, restorePoint: point.id, defined, disks };
}

async function findPoint(rt: JobRuntime, vm: string, id: string): Promise<RestorePoint> {
  if (!rt.spec.remote) return (await rt.repository({ create: false })).getPoint(vm, id);
  const points = sortPoints((await listRemotePoints(rt.spec.remote, vm)).points.filter((p) => p.vm === vm));
  const p = id === 'latest' ? points.at(-1) : points.find((x) => x.id === id);
  if (!p) throw new FerryError('REPO_POINT_NOT_FOUND', `no restore point "${id}" for vm ${vm}`, { vm });
  return p;
}
