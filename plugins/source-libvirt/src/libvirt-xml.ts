import { XMLBuilder, XMLParser } from 'fast-xml-parser';

/**
 * The parts of libvirt's XML documents this host reads (domain, checkpoint, backup job) and the
 * ones it writes (checkpoint and backup definitions). Parsed with fast-xml-parser, never with
 * regular expressions: attributes under `@_`, repeatable elements always arrays.
 */

/** Elements that may repeat, by their path: always arrays, also when there is one. */
const REPEATED = new Set([
  'domain.devices.disk',
  'domain.devices.channel',
  'domain.devices.interface',
  'domaincheckpoint.disks.disk',
  'domainbackup.disks.disk',
]);

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: '@_',
  parseTagValue: false,
  parseAttributeValue: false,
  jPath: true,
  isArray: (_name, jpath) => REPEATED.has(String(jpath)),
});

const builder = new XMLBuilder({ ignoreAttributes: false, attributeNamePrefix: '@_', format: true, suppressEmptyNode: true });

type Node = Record<string, unknown>;

/** Parses `xml` and returns its root element `root`; throws an Error saying what is wrong. */
export function parseRoot(xml: string, root: string): Node {
  let doc: Node;
  try {
    doc = parser.parse(xml, true) as Node;
  } catch (err) {
    throw new Error(`not well-formed XML: ${err instanceof Error ? err.message : String(err)}`);
  }
  const el = doc[root];
  if (!el || typeof el !== 'object') throw new Error(`no <${root}> element`);
  return el as Node;
}

function child(n: unknown, key: string): Node | undefined {
  const v = n && typeof n === 'object' ? (n as Node)[key] : undefined;
  if (v === '') return {};
  return v && typeof v === 'object' ? (v as Node) : undefined;
}

function text(n: unknown, key: string): string | undefined {
  const v = n && typeof n === 'object' ? (n as Node)[key] : undefined;
  if (typeof v === 'string') return v.trim();
  if (v && typeof v === 'object' && typeof (v as Node)['#text'] === 'string') return ((v as Node)['#text'] as string).trim();
  return undefined;
}

function attr(n: unknown, name: string): string | undefined {
  const v = n && typeof n === 'object' ? (n as Node)[`@_${name}`] : undefined;
  return typeof v === 'string' ? v : undefined;
}

function has(n: unknown, key: string): boolean {
  return Boolean(n && typeof n === 'object' && key in (n as Node));
}

function list(n: unknown, key: string): Node[] {
  const v = n && typeof n === 'object' ? (n as Node)[key] : undefined;
  return Array.isArray(v) ? (v.filter((x) => x && typeof x === 'object') as Node[]) : [];
}

export interface DomainDisk {
  /** Target device (`vda`, `sdb`): the disk's name in restore points. */
  dev: string;
  /** `disk`, `cdrom`, `floppy` or `lun`. */
  device: string;
  /** Source type: `file`, `block`, `network`, `volume`, ... */
  type: string;
  /** The image file or block device, for `file` and `block` sources. */
  path?: string;
  /** The driver's format (`qcow2`, `raw`). */
  format?: string;
  readonly: boolean;
  shareable: boolean;
  transient: boolean;
  /** The device's id in the running QEMU (`virtio-disk0`), when the domain runs. */
  alias?: string;
}

export interface DomainInfo {
  name: string;
  uuid: string;
  disks: DomainDisk[];
  /** The QEMU guest agent's channel (`org.qemu.guest_agent.0`), for guest processing. */
  agent?: { type: string; path?: string; state?: string };
}

export function parseDomain(xml: string): DomainInfo {
  const dom = parseRoot(xml, 'domain');
  const name = text(dom, 'name');
  const uuid = text(dom, 'uuid');
  if (!name || !uuid) throw new Error('the domain has no <name> or <uuid>');
  const devices = child(dom, 'devices');
  const disks = list(devices, 'disk').flatMap((d): DomainDisk[] => {
    const target = child(d, 'target');
    const dev = attr(target, 'dev');
    if (!dev) return [];
    const source = child(d, 'source');
    const type = attr(d, 'type') ?? 'file';
    const p = type === 'file' ? attr(source, 'file') : type === 'block' ? attr(source, 'dev') : undefined;
    return [
      {
        dev,
        device: attr(d, 'device') ?? 'disk',
        type,
        ...(p && { path: p }),
        ...(attr(child(d, 'driver'), 'type') && { format: attr(child(d, 'driver'), 'type') }),
        readonly: has(d, 'readonly'),
        shareable: has(d, 'shareable'),
        transient: has(d, 'transient'),
        ...(attr(child(d, 'alias'), 'name') && { alias: attr(child(d, 'alias'), 'name') }),
      },
    ];
  });
  const agentChannel = list(devices, 'channel').find((c) => attr(child(c, 'target'), 'name') === 'org.qemu.guest_agent.0');
  const agent = agentChannel && {
    type: attr(agentChannel, 'type') ?? 'unix',
    ...(attr(child(agentChannel, 'source'), 'path') && { path: attr(child(agentChannel, 'source'), 'path') }),
    ...(attr(child(agentChannel, 'target'), 'state') && { state: attr(child(agentChannel, 'target'), 'state') }),
  };
  return { name, uuid, disks, ...(agent && { agent }) };
}

/** Why a disk is not backed up, or undefined when it can be. */
export function unusableReason(d: DomainDisk): string | undefined {
  if (d.device !== 'disk') return `it is a ${d.device}, not a disk`;
  if (d.type === 'vhostuser') return "it is a vhost-user disk, served outside QEMU's block layer, which libvirt's backups read";
  if (d.readonly) return 'it is read-only';
  if (d.transient) return 'it is transient (its writes are discarded when the domain stops)';
  if (d.shareable) return 'it is shared with other domains, so no snapshot of it is consistent';
  return undefined;
}

export interface CheckpointInfo {
  name: string;
  parent?: string;
  /** Disks the checkpoint tracks with a bitmap, by target dev. */
  bitmaps: Set<string>;
}

export function parseCheckpoint(xml: string): CheckpointInfo {
  const cp = parseRoot(xml, 'domaincheckpoint');
  const name = text(cp, 'name');
  if (!name) throw new Error('the checkpoint has no <name>');
  const parent = text(child(cp, 'parent'), 'name');
  const bitmaps = new Set(
    list(child(cp, 'disks'), 'disk')
      .filter((d) => (attr(d, 'checkpoint') ?? 'bitmap') === 'bitmap')
      .map((d) => attr(d, 'name'))
      .filter((n): n is string => Boolean(n)),
  );
  return { name, ...(parent && { parent }), bitmaps };
}

export interface BackupJobDisk {
  dev: string;
  /** The scratch image (copy-before-write target) of the disk. */
  scratch?: string;
  exportName?: string;
  exportBitmap?: string;
  mode?: string;
  incremental?: string;
}

export interface BackupJob {
  /** The NBD server's unix socket, or `host:port` for TCP. */
  socket?: string;
  tcp?: string;
  disks: BackupJobDisk[];
}

export function parseBackupJob(xml: string): BackupJob {
  const b = parseRoot(xml, 'domainbackup');
  const server = child(b, 'server');
  const disks = list(child(b, 'disks'), 'disk')
    .filter((d) => attr(d, 'backup') !== 'no')
    .map((d) => ({
      dev: attr(d, 'name') ?? '',
      ...(attr(child(d, 'scratch'), 'file') && { scratch: attr(child(d, 'scratch'), 'file') }),
      ...(attr(d, 'exportname') && { exportName: attr(d, 'exportname') }),
      ...(attr(d, 'exportbitmap') && { exportBitmap: attr(d, 'exportbitmap') }),
      ...(attr(d, 'backupmode') && { mode: attr(d, 'backupmode') }),
      ...(attr(d, 'incremental') && { incremental: attr(d, 'incremental') }),
    }));
  const socket = attr(server, 'socket');
  const host = attr(server, 'name');
  return { ...(socket && { socket }), ...(host && { tcp: `${host}:${attr(server, 'port') ?? ''}` }), disks };
}

export interface BackupDiskPlan {
  dev: string;
  /** Absent: the disk is left out of the backup. */
  scratch?: string;
  /** The checkpoint an incremental disk counts from; absent: a full backup of the disk. */
  incremental?: string;
}

/** Where the backup's NBD server listens: a unix socket, or TCP (optionally with TLS). */
export type BackupServer = { socket: string } | { host: string; port: number; tls: boolean };

/** `<domainbackup mode='pull'>` exporting the planned disks over NBD. */
export function backupXml(server: BackupServer, disks: BackupDiskPlan[]): string {
  return builder.build({
    domainbackup: {
      '@_mode': 'pull',
      server:
        'socket' in server
          ? { '@_transport': 'unix', '@_socket': server.socket }
          : { '@_transport': 'tcp', '@_name': server.host, '@_port': String(server.port), ...(server.tls && { '@_tls': 'yes' }) },
      disks: {
        disk: disks.map((d) =>
          d.scratch
            ? {
                '@_name': d.dev,
                '@_backup': 'yes',
                '@_type': 'file',
                '@_backupmode': d.incremental ? 'incremental' : 'full',
                ...(d.incremental && { '@_incremental': d.incremental }),
                driver: { '@_type': 'qcow2' },
                scratch: { '@_file': d.scratch },
              }
            : { '@_name': d.dev, '@_backup': 'no' },
        ),
      },
    },
  }) as string;
}

/** `<domaincheckpoint>` with a bitmap on `bitmaps` and none on every other disk of the domain. */
export function checkpointXml(name: string, description: string, allDisks: string[], bitmaps: Set<string>): string {
  return builder.build({
    domaincheckpoint: {
      name,
      description,
      disks: { disk: allDisks.map((dev) => ({ '@_name': dev, '@_checkpoint': bitmaps.has(dev) ? 'bitmap' : 'no' })) },
    },
  }) as string;
}
