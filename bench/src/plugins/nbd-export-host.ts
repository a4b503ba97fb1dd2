/**
 * Benchmark-only source host `bench-nbd`: a VM whose one disk is an existing NBD export (qemu-nbd),
 * so `ferry backup` reads exactly what `nbdcopy` reads from the same server. No snapshot: the
 * export is read-only and does not change. The benchmark writes this plugin's package.json into its
 * work folder and names that folder under the job's `plugins:` key; it is never installed.
 */
import type { PluginRegistrar, SourceDisk, SourceHost, VmInventory, VmSelection } from '@ferry/core';

class NbdExportHost implements SourceHost {
  readonly label = 'bench-nbd';

  async inventory(vms: readonly VmSelection[]): Promise<VmInventory[]> {
    return vms.map((vm) => ({
      name: vm.name,
      disks: (vm.disks ?? ['disk']).map(
        (name): SourceDisk => ({
          name,
          nbd: { address: String(vm.options.nbd), exportName: '', ...(vm.options.connections !== undefined && { connections: Number(vm.options.connections) }) },
        }),
      ),
    }));
  }
}

export function register(r: PluginRegistrar): void {
  r.register('source-host', 'bench-nbd', { useValue: new NbdExportHost() }, {
    description: 'benchmark only: one disk per VM read from an existing NBD export',
    vmSchema: {
      type: 'object',
      properties: { nbd: { type: 'string' }, connections: { type: 'integer', minimum: 1 } },
      required: ['nbd'],
    },
  });
}

/** The package.json the benchmark writes next to nothing but this manifest (entry is absolute). */
export function manifest(entry: string): object {
  return {
    name: 'ferry-bench-nbd-export-host',
    version: '0.0.0',
    private: true,
    type: 'module',
    ferry: { apiVersion: '1.0', entry, provides: { 'source-host': ['bench-nbd'] } },
  };
}
