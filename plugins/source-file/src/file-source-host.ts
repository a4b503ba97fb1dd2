import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError, type JobContext, type SourceDisk, type SourceHost, type VmInventory, type VmSelection } from '@ferry/core/plugin';

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
    // The core refused listed disks outside the datastore when it loaded the job; this catches a
    // VM folder that is a link to elsewhere, and links changed since.
    const [real, root] = await Promise.all([fs.realpath(file), fs.realpath(this.config.datastore)]);
    const rel = path.relative(root, real);
    if (rel === '..' || rel.startsWith(`..${path.sep}`) || path.isAbsolute(rel)) {
      throw new FerryError('JOB_INVALID', `disk image ${file} resolves to ${real}, outside the datastore ${root}`, {
        ...this.job.where(at),
        host: this.label,
        disk: name,
      });
    }
    const format = formatFromName(name);
    return { name, path: file, ...(format && { format }), size: st.isFile() ? await virtualSize(file, st.size, format) : undefined };
  }
}

/**
 * The format from the file name only: a raw disk's first bytes belong to the guest, so content
 * never turns a `.raw` into a qcow2 (a guest could point the backup at host files through a forged
 * backing-file name). Other names are left to the transport, which checks the magic.
 */
function formatFromName(name: string): 'raw' | 'qcow2' | undefined {
  if (/\.qcow2?$/i.test(name)) return 'qcow2';
  if (/\.(raw|img)$/i.test(name)) return 'raw';
  return undefined;
}

/** Guest-visible size: the file size for raw images, the header's virtual size for qcow2. */
async function virtualSize(file: string, fileSize: number, format: string | undefined): Promise<number> {
  if (format === 'raw') return fileSize;
  const fh = await fs.open(file, 'r');
  try {
    const head = Buffer.alloc(32);
    const { bytesRead } = await fh.read(head, 0, 32, 0);
    if (bytesRead === 32 && head.subarray(0, 4).equals(QCOW2_MAGIC)) return Number(head.readBigUInt64BE(24));
    return fileSize;
  } finally {
    await fh.close();
  }
}
