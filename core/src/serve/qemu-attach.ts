import type { PointServer, ServedDisk } from './point-server.js';

/** How QEMU reaches a served disk: its blockdev node, and the `blockdev-add` arguments for it. */
export interface QemuDisk {
  disk: string;
  node: string;
  blockdev: Record<string, unknown>;
}

export interface QemuTls {
  /** QOM id of the `tls-creds-x509` object (endpoint=client). */
  id: string;
  /** Folder in qemu's layout: ca-cert.pem, client-cert.pem, client-key.pem. */
  dir: string;
  /** The name the server's certificate carries (`server` for `ferry certs init`). */
  hostname: string;
}

/** QEMU node names: a letter first, then letters, digits, `-`, `.`, `_`; at most 31 characters. */
export function qemuNodeName(disk: string, i: number): string {
  const base = `ferry${i}-${disk.replace(/[^A-Za-z0-9._-]/g, '_')}`;
  return base.slice(0, 31);
}

/** The NBD blockdev of every served disk, in the point's order. */
export function qemuDisks(server: PointServer, tls?: QemuTls): QemuDisk[] {
  return server.disks.map((d, i) => ({ disk: d.disk, node: qemuNodeName(d.disk, i), blockdev: blockdev(server.address, d, qemuNodeName(d.disk, i), tls) }));
}

function blockdev(address: string, d: ServedDisk, node: string, tls?: QemuTls): Record<string, unknown> {
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(address);
  const server = address.startsWith('unix:') ? { type: 'unix', path: address.slice(5) } : { type: 'inet', host: m![1], port: m![2] };
  return { driver: 'nbd', 'node-name': node, server, export: d.name, ...(tls && { 'tls-creds': tls.id, 'tls-hostname': tls.hostname }) };
}

/**
 * A complete command line that boots the recovered VM from the exports (`ferry instant-recover
 * --print`): the disks as virtio-blk devices (the first boots), KVM when there is one (else TCG),
 * user networking, console on the terminal. Memory and CPUs are defaults: Ferry backs up disks,
 * not the VM's hardware, so adjust them to the VM's.
 */
export function qemuCommandLine(server: PointServer, tls?: QemuTls): string[] {
  const argv = ['qemu-system-x86_64', '-name', `ferry-recover-${server.point.vm}`, '-machine', 'q35', '-accel', 'kvm', '-accel', 'tcg', '-m', '2048', '-smp', '2'];
  if (tls) argv.push('-object', `tls-creds-x509,id=${tls.id},endpoint=client,dir=${tls.dir}`);
  qemuDisks(server, tls).forEach((d, i) => {
    argv.push('-blockdev', JSON.stringify(d.blockdev), '-device', `virtio-blk-pci,drive=${d.node},id=${d.node}-dev${i === 0 ? ',bootindex=0' : ''}`);
  });
  argv.push('-nic', 'user,model=virtio-net-pci', '-nographic');
  return argv;
}

/** One shell word: bare when safe, else in single quotes. */
export function shellQuote(word: string): string {
  return /^[A-Za-z0-9_./:=,@%+-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
