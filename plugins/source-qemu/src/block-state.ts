import { ferryNodeKind } from './ferry-names.js';
import { isNotFound, type QmpClient } from './qmp-client.js';

/** A dirty bitmap as `query-named-block-nodes` reports it (QEMU names the flags this way). */
export interface DirtyBitmap {
  name?: string;
  recording: boolean;
  persistent: boolean;
  busy: boolean;
  inconsistent?: boolean;
  granularity: number;
  count: number;
}

export interface BlockNode {
  nodeName: string;
  drv: string;
  ro: boolean;
  virtualSize: number;
  filename: string;
  /** The backing file name QEMU reports (from the image header or the attached backing node). */
  backingFile?: string;
  bitmaps: DirtyBitmap[];
}

/** A guest device's drive (`query-block`): its id, its qdev path and the node it is attached to. */
export interface BlockDevice {
  device: string;
  qdev?: string;
  rootNode: string;
}

export interface BlockExport {
  id: string;
  nodeName: string;
  type: string;
}

export interface BlockJob {
  id: string;
  type: string;
  status: string;
}

/**
 * One reading of a QEMU's block layer: every named node with its bitmaps, the devices, which node
 * is whose child (from the block graph, when this QEMU answers `x-debug-query-block-graph`),
 * exports and jobs. Decisions are made on a reading, so read again after changing anything.
 */
export class BlockState {
  constructor(
    readonly nodes: Map<string, BlockNode>,
    readonly devices: BlockDevice[],
    /** child node name → its parents: `{ parent node name or '' for a device/export/job, edge name }`. */
    readonly parents: Map<string, { parent: string; edge: string }[]> | undefined,
    readonly exports: BlockExport[],
    readonly jobs: BlockJob[],
  ) {}

  node(name: string): BlockNode | undefined {
    return this.nodes.get(name);
  }

  /** The named child (`file`) of a filter node, from the block graph. */
  childOf(node: string, edge: string): string | undefined {
    if (!this.parents) return undefined;
    for (const [child, ps] of this.parents) if (ps.some((p) => p.parent === node && p.edge === edge)) return child;
    return undefined;
  }

  /**
   * The node `node` backs onto: from the block graph, or, on a QEMU without it, the format node whose
   * image is the backing file QEMU reports.
   */
  backingOf(node: string): string | undefined {
    if (this.parents) return this.childOf(node, 'backing');
    const file = this.node(node)?.backingFile;
    if (!file) return undefined;
    return [...this.nodes.values()].find((n) => n.filename === file && !PROTOCOL_DRIVERS.has(n.drv))?.nodeName;
  }

  /** True when no other block node holds `node` as a child (devices, exports and jobs don't count). */
  isRoot(node: string): boolean {
    return !(this.parents?.get(node) ?? []).some((p) => p.parent !== '');
  }
}

/**
 * Reads the block layer; a QEMU without the debug graph query still works (with less discovery).
 * The five queries are sent together (QEMU answers them in order on the one connection): one round
 * trip instead of five.
 */
export async function readBlockState(qmp: QmpClient): Promise<BlockState> {
  const [nodes, blocks, exports, jobs, graph] = await Promise.all([
    qmp.execute<RawNode[]>('query-named-block-nodes', { flat: true }),
    qmp.execute<RawBlock[]>('query-block'),
    qmp.execute<RawExport[]>('query-block-exports'),
    qmp.execute<RawJob[]>('query-jobs'),
    qmp.execute<RawGraph>('x-debug-query-block-graph').catch((err: unknown) => {
      if (isNotFound(err) || (err as { errorClass?: string }).errorClass === 'CommandNotFound') return undefined;
      throw err;
    }),
  ]);
  return new BlockState(
    new Map(nodes.map((n) => [n['node-name'], toNode(n)])),
    blocks.filter((b) => b.inserted?.['node-name']).map((b) => ({ device: b.device, qdev: b.qdev, rootNode: b.inserted!['node-name'] })),
    graph && parentsOf(graph),
    exports.map((e) => ({ id: e.id, nodeName: e['node-name'], type: e.type })),
    jobs.map((j) => ({ id: j.id, type: j.type, status: j.status })),
  );
}

function toNode(n: RawNode): BlockNode {
  return {
    nodeName: n['node-name'],
    drv: n.drv,
    ro: n.ro,
    virtualSize: n.image?.['virtual-size'] ?? 0,
    filename: n.image?.filename ?? n.file ?? '',
    backingFile: n.backing_file,
    bitmaps: n['dirty-bitmaps'] ?? [],
  };
}

function parentsOf(g: RawGraph): Map<string, { parent: string; edge: string }[]> {
  const byId = new Map(g.nodes.map((n) => [n.id, n]));
  const out = new Map<string, { parent: string; edge: string }[]>();
  for (const e of g.edges) {
    const child = byId.get(e.child);
    const parent = byId.get(e.parent);
    if (!child || child.type !== 'block-driver') continue;
    const list = out.get(child.name) ?? [];
    list.push({ parent: parent?.type === 'block-driver' ? parent.name : '', edge: e.name });
    out.set(child.name, list);
  }
  return out;
}

/** A disk of a VM as this host works with it. */
export interface ResolvedDisk {
  /** As the job names it (node name, drive id or qdev id), or as discovery chose it. */
  name: string;
  /**
   * The image's format node: writes reach it through every filter above it, persistent bitmaps live
   * on it, the copy-before-write fleecing starts from it and the overlay uses it as backing.
   */
  node: string;
  size: number;
  drv: string;
}

/** Filters with one `file` child: a disk's bitmaps and fleecing belong below them. */
const FILTER_DRIVERS = new Set(['copy-before-write', 'throttle', 'copy-on-read', 'preallocate', 'compress']);

/** Protocol drivers: without the block graph, a root that is a format node is the best guess of a disk. */
const PROTOCOL_DRIVERS = new Set(['file', 'host_device', 'host_cdrom', 'nbd', 'iscsi', 'rbd', 'ssh', 'http', 'https', 'null-co', 'null-aio', 'nvme', 'gluster']);

/**
 * Finds the disk the job names: a node name first (what qemu-storage-daemon and `-blockdev` users
 * write), then a drive id or qdev id of a guest device. Undefined when the VM has no such disk.
 */
export function resolveDisk(state: BlockState, name: string): ResolvedDisk | undefined {
  if (isFerryNode(name)) return undefined;
  let root = state.node(name) ? name : undefined;
  root ??= state.devices.find((d) => d.device === name || d.qdev === name || qdevId(d.qdev) === name)?.rootNode;
  if (!root) return undefined;
  const node = state.node(formatNodeOf(state, root).name);
  if (!node || isFerryNode(node.nodeName)) return undefined;
  return { name, node: node.nodeName, size: node.virtualSize, drv: node.drv };
}

/**
 * Without `disks:` in the job, the VM's disks are the writable drives of its guest devices; a
 * qemu-storage-daemon has no devices, so there they are the writable nodes no other node uses (what
 * an export or a device would attach to). Ferry's own overlay nodes are never disks; a disk under an
 * external snapshot is found below its overlay.
 */
export function discoverDisks(state: BlockState): ResolvedDisk[] {
  const out = new Map<string, ResolvedDisk>();
  const add = (name: string, root: string): void => {
    const found = formatNodeOf(state, root);
    const node = state.node(found.name);
    // Under an external snapshot the disk's node is read-only for a while; it is still the disk.
    if (!node || (node.ro && !found.underSnapshot) || isFerryNode(node.nodeName) || node.nodeName.startsWith('#')) return;
    if ([...out.values()].some((d) => d.node === node.nodeName)) return;
    out.set(name, { name, node: node.nodeName, size: node.virtualSize, drv: node.drv });
  };
  if (state.devices.length) {
    for (const d of state.devices) add(d.device || qdevId(d.qdev) || d.rootNode, d.rootNode);
  } else {
    for (const n of state.nodes.values()) {
      const rootLike = state.parents ? state.isRoot(n.nodeName) : !PROTOCOL_DRIVERS.has(n.drv) && !FILTER_DRIVERS.has(n.drv);
      // Named after the format node: a root may be a filter, even an unnamed one (a running backup's).
      if (rootLike) add(formatNodeOf(state, n.nodeName).name, n.nodeName);
    }
  }
  return [...out.values()].sort((a, b) => a.name.localeCompare(b.name));
}

/**
 * Walks down through filters (a throttle group, or a copy-before-write filter of a running backup)
 * and through the overlays of Ferry's external snapshots (of any job), which stand in for the disk
 * while a backup reads it.
 */
function formatNodeOf(state: BlockState, root: string): { name: string; underSnapshot: boolean } {
  let name = root;
  let underSnapshot = false;
  for (let depth = 0; depth < 8; depth++) {
    const node = state.node(name);
    const snapshot = ferryNodeKind(name) === 'external';
    if (!node || (!FILTER_DRIVERS.has(node.drv) && !snapshot)) break;
    const child = snapshot ? state.backingOf(name) : state.childOf(name, 'file');
    if (!child) break;
    underSnapshot ||= snapshot;
    name = child;
  }
  return { name, underSnapshot };
}

/** `/machine/peripheral/virtio-disk0/virtio-backend` → `virtio-disk0` (the id the user gave the device). */
function qdevId(qdev: string | undefined): string | undefined {
  return qdev ? /\/peripheral\/([^/]+)/.exec(qdev)?.[1] : undefined;
}

function isFerryNode(name: string): boolean {
  return ferryNodeKind(name) !== undefined;
}

interface RawNode {
  'node-name': string;
  drv: string;
  ro: boolean;
  file?: string;
  backing_file?: string;
  image?: { 'virtual-size'?: number; filename?: string };
  'dirty-bitmaps'?: DirtyBitmap[];
}
interface RawBlock {
  device: string;
  qdev?: string;
  inserted?: { 'node-name': string };
}
interface RawExport {
  id: string;
  'node-name': string;
  type: string;
}
interface RawJob {
  id: string;
  type: string;
  status: string;
}
interface RawGraph {
  nodes: { id: number; type: string; name: string }[];
  edges: { parent: number; child: number; name: string }[];
}
