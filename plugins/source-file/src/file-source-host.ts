import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError, type JobContext, type SourceDisk, type SourceHost, type VmInventory, type VmSelection } from '@ferry/core';

export interface FileSourceConfig {
  /** Absolute (the core resolved it against the job file's folder). */
  datastore: string;
}

const QCOW2_MAGIC = Buffer.from([0x51, 0x46, 0x49, 0xfb]);

/**
 * Source host for disk images at rest: a datastore folder of raw or qcow2 images (or block devices)
 * of powered-off VMs, or images another tool has already frozen. Nothing to snapshot: the images do
 * not change while they are read.
 */
export class FileSourceHost implements SourceHost {
  constructor(
    private readonly config: FileSourceConfig,
    private readonly job: JobContext,
  ) {}

  get label(): string {
    return `file:${this.config.datastore}`;
  }

  async inventory(vms: readonly VmSelection[]): Promise<VmInventory[]> {
    const out: VmInventory[] = [];
    for (const [i, vm] of vms.entries()) {
      const names = vm.disks ?? (await this.vmFolderDisks(vm.name, i));
      const disks: SourceDisk[] = [];
      for (const [j, name] of names.entries()) {
        disks.push(await this.describe(name, vm.disks ? ['source', 'vms', i, 'disks', j] : ['source', 'vms', i, 'name']));
      }
      out.push({ name: vm.name, disks });
    }
    return out;
  }

  /** Without `disks:`, a VM's disks are the images in `<datastore>/<vm>/`. */
  private async vmFolderDisks(vm: string, index: number): Promise<string[]> {
    const dir = path.join(this.config.datastore, vm);
    try {
      const entries = await fs.readdir(dir, { withFileTypes: true });
      const names = entries.filter((e) => e.isFile() || e.isBlockDevice()).map((e) => `${vm}/${e.name}`);
      if (names.length) return names.sort();
    } catch {
      // reported below
    }
    throw new FerryError(
      'SOURCE_VM_NOT_FOUND',
      `vm ${vm} lists no disks and ${dir} holds no disk images; name its disks with "disks:"`,
      { ...this.job.where(['source', 'vms', index, 'name']), host: this.label, vm },
    );
  }

  private async describe(name: string, at: (string | number)[]): Promise<SourceDisk> {
    const file = path.resolve(this.config.datastore, name);
    let st: import('node:fs').Stats;
    try {
      st = await fs.stat(file);
    } catch (err) {
      throw new FerryError('SOURCE_DISK_NOT_FOUND', `disk image ${file} cannot be opened: ${(err as NodeJS.ErrnoException).code}`, {
        ...this.job.where(at),
        host: this.label,
        disk: name,
      });
    }
    if (!st.isFile() && !st.isBlockDevice()) {
      throw new FerryError('SOURCE_DISK_NOT_FOUND', `${file} is neither an image file nor a block device`, {
        ...this.job.where(at),
        host: this.label,
        disk: name,
      });
    }
    return { name, path: file, format: await detectFormat(file), size: st.isFile() ? st.size : undefined };
  }
}

async function detectFormat(file: string): Promise<string> {
  const fh = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(4);
    const { bytesRead } = await fh.read(head, 0, 4, 0);
    return bytesRead === 4 && head.equals(QCOW2_MAGIC) ? 'qcow2' : 'raw';
  } finally {
    await fh.close();
  }
}
