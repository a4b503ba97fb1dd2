import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError } from '../../errors.js';
import { BlockMap } from '../../repository/block-map.js';
import { Repository, type RestorePoint } from '../../repository/repository.js';
import { WorkerBlockCodec } from '../../pipe/worker-block-codec.js';
import { createPluginHost } from '../../session/job-runtime.js';
import { MemoryBackend } from '../../testing/memory-backend.js';
import { changeVmImage, makeVmImage } from '../../testing/vm-image.js';
import { connectionPair, type Connection, type WireMessage } from '../wire/index.js';
import { ControlChannel, type DiskOrder, type DiskOutcome } from './protocol.js';
import { ProxyService } from './proxy-service.js';
import type { Dial } from './proxy-pipe.js';
import { RepositoryService } from './repository-service.js';

const BLOCK = 256 * 1024;
const WINDOW = 4;

/**
 * The two services joined in memory (the wire layer's connection pairs): a proxy reading a raw
 * image through the hot-add transport, a repository service on a memory backend, and a control
 * channel playing the backup server.
 */
describe('data-mover services (in memory)', function () {
  this.timeout(60_000);
  let dir: string;
  let image: string;
  let codec: WorkerBlockCodec;
  let proxy: ProxyService;
  let backend: MemoryBackend;
  /** What the n-th data pipe does: work, break after `CUT_AFTER` blocks, or find the proxy gone. */
  let plan: (n: number) => 'pass' | 'cut' | 'down';
  let dials: number;
  const CUT_AFTER = 12;

  const dial: Dial = async () => {
    const what = plan(dials++);
    if (what === 'down') throw new FerryError('PIPE_UNREACHABLE', 'the proxy is down (test)');
    const [a, b] = connectionPair({ roles: ['repository', 'proxy'] });
    void proxy.serve(b);
    return what === 'cut' ? cutAfter(a, b, CUT_AFTER) : a;
  };

  function service(retryWindowMs = 5000): RepositoryService {
    return new RepositoryService({
      openRepository: (o) => Repository.open(backend, o),
      codec: () => codec,
      auth: { kind: 'psk', key: Buffer.alloc(32, 1), identity: 'test', role: 'repository' },
      retryWindowMs,
      window: WINDOW,
      dial,
    });
  }

  function control(svc: RepositoryService): ControlChannel {
    const [a, b] = connectionPair({ roles: ['server', 'repository'] });
    void svc.serve(b);
    return new ControlChannel(a);
  }

  function order(session: string, extra: Partial<DiskOrder> = {}, file = image): DiskOrder {
    return {
      session,
      vm: 'vm1',
      disk: { name: 'disk0.raw', path: file, format: 'raw' },
      proxy: 'proxy-1:9000',
      transport: 'auto',
      filters: ['zero'],
      compressor: { name: 'deflate', level: 6 },
      blockSize: BLOCK,
      fullReason: 'test',
      ...extra,
    };
  }

  async function backup(svc: RepositoryService, session: string, o = order(session)): Promise<{ outcome: DiskOutcome; point: RestorePoint }> {
    const c = control(svc);
    try {
      await c.request('session.open', { job: 'j', session, vms: ['vm1'] });
      const outcome = await c.request('disk.receive', { order: o });
      const { point } = await c.request('point.commit', {
        vm: 'vm1',
        point: { id: session, job: 'j', session, createdAt: new Date().toISOString() },
        disks: [{ diskId: outcome.diskId, name: 'disk0.raw', zeroBlocks: outcome.target.blocksZero, transport: outcome.info.transport, mode: outcome.info.mode }],
      });
      await c.request('session.end', { vms: ['vm1'] });
      return { outcome, point };
    } finally {
      await c.close();
    }
  }

  async function restore(svc: RepositoryService, point: string): Promise<Buffer> {
    const c = control(svc);
    let map: BlockMap | undefined;
    const parts: Promise<void>[] = [];
    let out = Buffer.alloc(0);
    let done = 0;
    try {
      await c.request('restore.open', { vm: 'vm1', disk: 'disk0.raw', point }, {
        onMessage: (m: WireMessage) => {
          if (m.type === 'restore.map') {
            map = BlockMap.decode(m.body!, 'map');
            out = Buffer.alloc(map.diskSize);
          } else if (m.type === 'restore.block') {
            const i = Number(m.header!.i);
            parts.push(
              codec.decode(m.body!, map!.get(i)!, `block ${i}`).then((raw) => {
                raw.copy(out, i * BLOCK);
                void c.conn.send({ type: 'restore.ack', header: { id: m.header!.id, done: ++done } });
              }),
            );
          }
        },
      });
      await Promise.all(parts);
      return out;
    } finally {
      await c.close();
    }
  }

  before(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-services-'));
    image = path.join(dir, 'disk0.raw');
    await makeVmImage(image, { sizeBytes: 24 * 1024 * 1024, seed: 4 });
    const plugins = await createPluginHost();
    codec = new WorkerBlockCodec(plugins.options, 2);
    proxy = new ProxyService({ plugins, codec: () => codec, taskSlots: 2 });
  });

  after(async function () {
    await codec?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  beforeEach(function () {
    backend = new MemoryBackend();
    plan = () => 'pass';
    dials = 0;
  });

  it('moves a disk from the proxy into the repository, dedups a second run, and restores it byte-identical', async function () {
    const svc = service();
    const first = await backup(svc, 's1');
    expect(first.outcome.info.transport).to.equal('hotadd');
    expect(first.outcome.target.blocksNew).to.be.greaterThan(10);
    expect(first.outcome.summary.bytesTransferred).to.be.greaterThan(0);
    expect(first.outcome.reconnects).to.equal(0);
    expect(first.outcome.stages.map((s) => s.stage)).to.include.members(['source read', 'processing', 'target write']);
    expect(first.outcome.bottleneck).to.be.a('string');
    const second = await backup(svc, 's2');
    expect(second.outcome.target.blocksNew).to.equal(0);
    expect(second.outcome.summary.bytesTransferred).to.equal(0, 'known blocks cross the pipe as hashes only');
    expect((await restore(svc, 's1')).equals(await fs.readFile(image))).to.equal(true);
  });

  it('runs incremental from the changed ranges: unchanged blocks come from the base map, both points restore', async function () {
    const copy = path.join(dir, 'disk0.incremental.raw');
    await fs.copyFile(image, copy);
    const svc = service();
    const first = await backup(svc, 's1', order('s1', {}, copy));
    const offsets = await changeVmImage(copy, { count: 3, length: 4096, seed: 9 });
    const extents = offsets.map((offset) => ({ offset, length: 4096 }));
    const base = { point: 's1', disk: first.point.disks[0], reason: 'changed blocks since s1 (test)', extents };
    const second = await backup(svc, 's2', order('s2', { base, fullReason: undefined }, copy));
    expect(second.outcome.info.mode).to.equal('incremental');
    expect(second.outcome.info.modeReason).to.equal('changed blocks since s1 (test)');
    const touched = new Set(offsets.map((o) => Math.floor(o / BLOCK))).size;
    expect(second.outcome.target.blocksUnchanged).to.equal(second.outcome.blocks - touched);
    expect(second.outcome.summary.bytesRead).to.be.at.most(touched * BLOCK);
    expect((await restore(svc, 's2')).equals(await fs.readFile(copy))).to.equal(true);
    expect((await restore(svc, 's1')).equals(await fs.readFile(image))).to.equal(true);
  });

  /**
   * A sparse disk of 2 GiB and 1000 bytes (8193 blocks): data in blocks 0-3 and 2400-2403, holes
   * elsewhere; the file takes 2 MiB.
   */
  async function sparseDisk(): Promise<{ file: string; count: number; data: number[] }> {
    const file = path.join(dir, 'sparse.raw');
    const count = Math.ceil((2 * 1024 ** 3 + 1000) / BLOCK);
    const fh = await fs.open(file, 'w');
    try {
      await fh.truncate(2 * 1024 ** 3 + 1000);
      const rng = Buffer.alloc(4 * BLOCK);
      for (let k = 0; k < rng.length; k += 4) rng.writeUInt32LE((k * 2654435761) >>> 0, k);
      await fh.write(rng, 0, rng.length, 0);
      await fh.write(rng.reverse(), 0, rng.length, 2400 * BLOCK);
    } finally {
      await fh.close();
    }
    return { file, count, data: [0, 1, 2, 3, 2400, 2401, 2402, 2403] };
  }

  it('sends a long hole as run messages of at most 4096 blocks, which a peer of protocol version 1 takes block by block', async function () {
    const { file, count, data } = await sparseDisk();
    const [a, b] = connectionPair({ roles: ['repository', 'proxy'] });
    void proxy.serve(b);
    const o = order('s1', {}, file);
    const task = { version: 1, taskId: 'old-peer', vm: o.vm, disk: o.disk, transport: 'auto', filters: ['zero'], compressor: o.compressor, blockSize: BLOCK, readAhead: 8, window: WINDOW, resumeFrom: 0 };
    await a.send({ type: 'task', header: task });
    expect((await a.receive())?.type).to.equal('task.ok');
    // What a repository service before runs did: one record per block, in index order.
    const perBlock: string[] = [];
    const runs: number[] = [];
    for (;;) {
      const m = await a.receive();
      const h = m?.header ?? {};
      if (m?.type === 'known?') await a.send({ type: 'known!', header: { q: h.q, have: (h.hashes as string[]).map(() => false) } });
      else if (m?.type === 'block' || m?.type === 'known') {
        perBlock.push(`data ${h.i}`);
        await a.send({ type: 'ack', header: { upTo: perBlock.length } });
      } else if (m?.type === 'run') {
        runs.push(Number(h.n));
        for (let k = 0; k < Number(h.n); k++) perBlock.push(`${h.k} ${Number(h.i) + k}`);
      } else {
        expect(m?.type, JSON.stringify(h)).to.equal('end');
        await a.send({ type: 'done' });
        break;
      }
    }
    await a.close();
    expect(runs).to.deep.equal([2396, 4096, 1693]);
    expect(perBlock).to.deep.equal([...Array(count).keys()].map((i) => (data.includes(i) ? `data ${i}` : `zero ${i}`)));
  });

  it('stores a long hole that crossed the pipe as runs: the same block map and zero-block count', async function () {
    const { file, count, data } = await sparseDisk();
    const { outcome, point } = await backup(service(), 's1', order('s1', {}, file));
    expect(outcome.target.blocksZero).to.equal(count - data.length);
    expect(outcome.target.blocksNew).to.equal(data.length);
    expect(outcome.summary.zeroBytesSkipped).to.equal(2 * 1024 ** 3 + 1000 - data.length * BLOCK);
    const map = await (await Repository.open(backend, { create: false })).readMap(point.disks[0]!);
    expect(map.blockCount).to.equal(count);
    for (let i = 0; i < count; i++) expect(map.get(i) === undefined, `block ${i}`).to.equal(!data.includes(i));
  });

  it('refuses a read task outside the limits with PIPE_PROTOCOL, before opening anything', async function () {
    for (const bad of [{ blockSize: 3 }, { readAhead: 1_000_000 }, { window: 0 }, { idKey: 'zz' }]) {
      const [a, b] = connectionPair({ roles: ['repository', 'proxy'] });
      void proxy.serve(b);
      const o = order('s1');
      const task = { version: 1, taskId: 't', vm: o.vm, disk: o.disk, transport: 'auto', filters: [], compressor: o.compressor, blockSize: BLOCK, readAhead: 8, window: 4, resumeFrom: 0, ...bad };
      await a.send({ type: 'task', header: task });
      const m = await a.receive();
      expect(m?.type).to.equal('error');
      expect((m?.header?.error as { code: string }).code, JSON.stringify(bad)).to.equal('PIPE_PROTOCOL');
      await a.close();
    }
  });

  it('accepts a read task of either protocol version it speaks (1, 2) and refuses another with PIPE_VERSION', async function () {
    for (const [version, code] of [[1, undefined], [2, undefined], [3, 'PIPE_VERSION'], [0, 'PIPE_VERSION']] as const) {
      const [a, b] = connectionPair({ roles: ['repository', 'proxy'] });
      void proxy.serve(b);
      const o = order('s1');
      // A disk the proxy cannot open: a known version gets that far (a read error), another does not.
      const task = { version, taskId: `v${version}`, vm: o.vm, disk: { name: 'missing.raw' }, transport: 'auto', filters: [], compressor: o.compressor, blockSize: BLOCK, readAhead: 8, window: 4, resumeFrom: 0 };
      await a.send({ type: 'task', header: task });
      const m = await a.receive();
      expect(m?.type).to.equal('error');
      const got = (m?.header?.error as { code: string; detail: string });
      if (code) expect(got.code, `version ${version}`).to.equal(code);
      else expect(got.code, `version ${version}: ${got.detail}`).to.not.equal('PIPE_VERSION');
      await a.close();
    }
  });

  it('resumes after the data pipe breaks, sends at most the in-flight window again, and restores byte-identical', async function () {
    plan = (n) => (n < 3 ? 'cut' : 'pass');
    const svc = service();
    const { outcome, point } = await backup(svc, 's1');
    expect(outcome.reconnects).to.equal(3);
    expect(outcome.summary.resentBlocks).to.be.at.most(WINDOW * 3);
    expect(dials).to.equal(4);
    expect((await restore(svc, point.id)).equals(await fs.readFile(image))).to.equal(true);
  });

  it('fails the disk with REMOTE_RESUME_FAILED when the proxy stays away, and commits nothing', async function () {
    plan = (n) => (n === 0 ? 'cut' : 'down');
    const svc = service(600);
    const c = control(svc);
    try {
      await c.request('session.open', { job: 'j', session: 's1', vms: ['vm1'] });
      const failed = await c.request('disk.receive', { order: order('s1') }).then(
        () => undefined,
        (e: FerryError) => e,
      );
      expect(failed?.code).to.equal('REMOTE_RESUME_FAILED');
    } finally {
      await c.close();
    }
    expect([...backend.objects.keys()].filter((k) => k.startsWith('points/'))).to.deep.equal([]);
  });
});

/**
 * The repository end of a pair that breaks like a dropped TCP connection after `after` data blocks
 * arrived: both ends are closed, and the next receive fails with PIPE_CLOSED.
 */
function cutAfter(conn: Connection, peer: Connection, after: number): Connection {
  let blocks = 0;
  let broken = false;
  const breakNow = async (): Promise<never> => {
    broken = true;
    await Promise.all([conn.close('cut').catch(() => undefined), peer.close('cut').catch(() => undefined)]);
    throw new FerryError('PIPE_CLOSED', 'connection cut (test)');
  };
  return {
    peer: conn.peer,
    version: conn.version,
    closed: conn.closed,
    send: (m) => (broken ? Promise.reject(new FerryError('PIPE_CLOSED', 'connection cut (test)')) : conn.send(m)),
    close: (r) => conn.close(r),
    async receive() {
      if (broken) return breakNow();
      const m = await conn.receive();
      if (m?.type === 'block' && ++blocks > after) return breakNow();
      return m;
    },
    [Symbol.asyncIterator]: () => conn[Symbol.asyncIterator](),
  };
}
