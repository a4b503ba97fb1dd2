import { expect } from 'chai';
import type { Extent } from '../contracts/extent.js';
import type { SourceDisk } from '../contracts/source-host.js';
import type { DiskHandle, ProbeResult, Transport } from '../contracts/transport.js';
import { FerryError } from '../errors.js';
import { skipRangeFilter, type ChangedRanges } from '../pipe/source-mover.js';
import { BlockMap } from '../repository/block-map.js';
import type { RestorePoint, RestorePointDisk } from '../repository/repository.js';
import {
  autoTransportOrder,
  chooseBase,
  chooseMode,
  chooseTransport,
  planMode,
  previousOf,
  readBase,
  skipExtents,
  withRanges,
  type BaseStore,
  type TransportSource,
} from './disk-plan.js';

const BLOCK = 64 * 1024;
const SIZE = 8 * BLOCK;

function pointDisk(over: Partial<RestorePointDisk> = {}): RestorePointDisk {
  return { name: 'd0', sizeBytes: SIZE, blockSize: BLOCK, map: 'maps/x', mapSha256: '', blocks: 8, zeroBlocks: 0, transport: 'hotadd', mode: 'full', ...over };
}

function point(id: string, over: Partial<RestorePoint> = {}): RestorePoint {
  return { format: 'ferry-restore-point', version: 1, id, job: 'nightly', vm: 'vm1', session: id, createdAt: '', disks: [pointDisk()], ...over };
}

function disk(over: Partial<SourceDisk> = {}): SourceDisk {
  return { name: 'd0', path: '/images/d0.raw', changes: { since: 'p1' }, ...over };
}

function handle(size = SIZE, changedBlocks?: DiskHandle['changedBlocks']): DiskHandle {
  return { size, read: async (_o, n) => new Uint8Array(n), close: async () => undefined, ...(changedBlocks && { changedBlocks }) };
}

/** A repository holding one base map with a block in every slot; `damaged` blocks need healing. */
function store(damaged: number[] = [], unreadable?: string): BaseStore & { loads: number } {
  const map = new BlockMap(SIZE, BLOCK);
  for (let i = 0; i < map.blockCount; i++) map.set(i, Buffer.alloc(32, i + 1));
  const s = {
    loads: 0,
    readMap: async (): Promise<BlockMap> => {
      if (unreadable) throw new FerryError('REPO_CORRUPT_OBJECT', unreadable);
      return map;
    },
    blocks: {
      load: async (): Promise<void> => void s.loads++,
      needsHeal: (hash: Uint8Array): boolean => damaged.includes(hash[0] - 1),
    },
  };
  return s;
}

async function ranges(changed: ChangedRanges): Promise<Extent[]> {
  return 'extents' in changed ? changed.extents : changed.query(0, SIZE);
}

describe('disk plan', function () {
  describe('full or incremental', function () {
    it('is full without an earlier point of this disk by this job', async function () {
      const expected = 'full read: no earlier restore point of this disk by this job';
      expect(await planMode(disk(), undefined, BLOCK, store(), handle())).to.deep.equal({ mode: 'full', reason: expected });
      const otherDisk = point('p1', { disks: [pointDisk({ name: 'd1' })] });
      expect((await planMode(disk(), otherDisk, BLOCK, store(), handle())).reason).to.equal(expected);
    });

    it("takes the job's newest point, never another job's", async function () {
      const points = [point('p1'), point('p2', { job: 'weekly' })];
      expect(previousOf(points, 'nightly')?.id).to.equal('p1');
      expect(previousOf(points, 'weekly')?.id).to.equal('p2');
      expect(previousOf([point('p1', { job: 'weekly' })], 'nightly')).to.equal(undefined);
      const plan = await planMode(disk(), previousOf([point('p1', { job: 'weekly' })], 'nightly'), BLOCK, store(), handle());
      expect(plan.reason).to.equal('full read: no earlier restore point of this disk by this job');
    });

    it("is full when the host does not vouch for the changes (bitmap missing), with the host's reason", async function () {
      const missing = disk({ changes: undefined, fullReason: 'dirty bitmap ferry.nightly.p1 is missing' });
      expect((await planMode(missing, point('p1'), BLOCK, store(), handle())).reason).to.equal('full read: dirty bitmap ferry.nightly.p1 is missing');
      const silent = disk({ changes: undefined });
      expect((await planMode(silent, point('p1'), BLOCK, store(), handle())).reason).to.equal('full read: the source host tracks no changed blocks for this disk');
    });

    it('is full when the changes are tracked since another point', async function () {
      const plan = await planMode(disk({ changes: { since: 'p0' } }), point('p1'), BLOCK, store(), handle());
      expect(plan).to.deep.equal({ mode: 'full', reason: 'full read: changes are tracked since p0, but the newest restore point is p1' });
    });

    it('is full when the block size changed', async function () {
      const plan = await planMode(disk(), point('p1'), 2 * BLOCK, store(), handle());
      expect(plan.reason).to.equal(`full read: the block size changed from ${BLOCK} to ${2 * BLOCK}`);
    });

    it('is full when the disk was resized', async function () {
      const plan = await planMode(disk(), point('p1'), BLOCK, store(), handle(SIZE + BLOCK));
      expect(plan.reason).to.equal(`full read: the disk was resized from ${SIZE} to ${SIZE + BLOCK} bytes`);
    });

    it('is full when neither the host nor the transport can list the changes', async function () {
      const plan = await planMode(disk(), point('p1'), BLOCK, store(), handle());
      expect(plan.reason).to.equal('full read: the transport cannot list changed blocks');
    });

    it('is full when the base map cannot be read', async function () {
      const plan = await planMode(disk({ changes: { since: 'p1', extents: [] } }), point('p1'), BLOCK, store([], 'bad map'), handle());
      expect(plan.reason).to.equal('full read: the block map of p1 cannot be read (REPO_CORRUPT_OBJECT: bad map)');
    });

    it('decides in one order whatever the placement: block size and map before what needs the open disk', async function () {
      // The remote placement learns these facts on three machines, in this order.
      const resizedToo = await planMode(disk(), point('p1'), 2 * BLOCK, store(), handle(SIZE + BLOCK));
      expect(resizedToo.reason).to.include('block size changed');
      const unreadableToo = await planMode(disk(), point('p1'), BLOCK, store([], 'bad map'), handle(SIZE + BLOCK));
      expect(unreadableToo.reason).to.include('cannot be read');
    });

    it("is incremental over the host's own extents, naming the point and the tracking", async function () {
      const extents = [{ offset: 3 * BLOCK + 10, length: 100 }];
      const host = disk({ changes: { since: 'p1', extents }, changeTracking: { id: 'ferry.nightly.p2' } });
      const plan = await planMode(host, point('p1'), BLOCK, store(), handle(SIZE, async () => [{ offset: 0, length: SIZE }]));
      expect(plan.mode).to.equal('incremental');
      expect(plan.reason).to.equal('changed blocks since restore point p1 (tracking ferry.nightly.p2)');
      expect(plan.base?.blockCount).to.equal(8);
      expect(plan.mode === 'incremental' && (await ranges(plan.changed))).to.deep.equal(extents, "the host's extents win over the transport's list");
    });

    it("is incremental over the transport's change list when the host has no extents", async function () {
      const listed = [{ offset: BLOCK, length: BLOCK }];
      const plan = await planMode(disk(), point('p1'), BLOCK, store(), handle(SIZE, async () => listed));
      expect(plan).to.include({ mode: 'incremental', reason: 'changed blocks since restore point p1' });
      expect(plan.mode === 'incremental' && (await ranges(plan.changed))).to.deep.equal(listed);
    });
  });

  describe('heal ranges', function () {
    it('reads damaged blocks of the base map again and says how many', async function () {
      const repo = store([2, 5]);
      const plan = await planMode(disk({ changes: { since: 'p1', extents: [{ offset: 0, length: 10 }] } }), point('p1'), BLOCK, repo, handle());
      expect(plan.reason).to.equal('changed blocks since restore point p1; reading 2 block(s) again whose stored copy is damaged (self-heal)');
      expect(plan.mode === 'incremental' && (await ranges(plan.changed))).to.deep.equal([
        { offset: 0, length: 10 },
        { offset: 2 * BLOCK, length: BLOCK },
        { offset: 5 * BLOCK, length: BLOCK },
      ]);
      expect(repo.loads).to.equal(1, 'the damaged-blocks list is loaded before it is asked');
    });

    it('finds the ranges at the repository and adds them to a transport query, clipped to the asked range', async function () {
      const base = chooseBase(disk(), point('p1'), BLOCK);
      expect('base' in base).to.equal(true);
      if (!('base' in base)) return;
      const read = await readBase(store([1]), base.base);
      expect('heal' in read && read.heal).to.deep.equal([{ offset: BLOCK, length: BLOCK }]);
      const changed = withRanges({ query: async () => [{ offset: 0, length: 4 }] }, [{ offset: BLOCK, length: BLOCK }]);
      expect(await (changed as { query: (o: number, n: number) => Promise<Extent[]> }).query(BLOCK + 100, 200)).to.deep.equal([
        { offset: 0, length: 4 },
        { offset: BLOCK + 100, length: 200 },
      ]);
      const untouched = { extents: [] };
      expect(withRanges(untouched, [])).to.equal(untouched);
    });

    it("the reader's stage adds the heal count to the reason the server gave", function () {
      const decided = chooseMode({ baseSize: SIZE, reason: 'changed blocks since s1 (test)', extents: [], heal: [{ offset: 0, length: BLOCK }] }, handle());
      expect(decided).to.include({ mode: 'incremental', reason: 'changed blocks since s1 (test); reading 1 block(s) again whose stored copy is damaged (self-heal)' });
    });
  });

  describe('transport', function () {
    function transports(probes: Record<string, ProbeResult | undefined>, reader?: string): TransportSource & { created: string[] } {
      const created: string[] = [];
      return {
        created,
        available: () => Object.keys(probes),
        create: async (name): Promise<Transport> => {
          created.push(name);
          const p = probes[name];
          return { open: async () => handle(), ...(p && { probe: async () => p }) };
        },
        providerOf: (name) => `@ferry/transport-${name}`,
        reader,
      };
    }
    const where = { vm: 'vm1', disk: 'd0' };

    it('auto tries hot-add, then NBD, then any others by name', function () {
      expect(autoTransportOrder(['nbd', 'zzz', 'hotadd', 'aaa'])).to.deep.equal(['hotadd', 'nbd', 'zzz', 'aaa']);
      expect(autoTransportOrder(['nbd'])).to.deep.equal(['nbd']);
    });

    it('auto takes the first transport whose probe says yes, with its reason', async function () {
      const from = transports({ nbd: { ok: true, reason: 'NBD export nbd://h/d0' }, hotadd: { ok: true, reason: 'the image is readable from this proxy' } });
      const chosen = await chooseTransport('auto', disk(), from, where);
      expect(chosen).to.include({ name: 'hotadd', reason: 'auto: the image is readable from this proxy' });
      expect(from.created).to.deep.equal(['hotadd'], 'later transports are not created');
    });

    it('auto falls back when a probe says no', async function () {
      const from = transports({ hotadd: { ok: false, reason: 'no path on this proxy' }, nbd: { ok: true, reason: 'NBD export nbd://h/d0' } });
      expect(await chooseTransport('auto', disk(), from, where)).to.include({ name: 'nbd', reason: 'auto: NBD export nbd://h/d0' });
    });

    it('a transport without a probe is assumed able to read', async function () {
      expect(await chooseTransport('auto', disk(), transports({ custom: undefined }), where)).to.include({ name: 'custom', reason: 'auto: custom has no probe; assumed able to read the disk' });
    });

    it('an explicit choice must say yes itself; auto order does not apply', async function () {
      const from = transports({ hotadd: { ok: true, reason: 'image readable' }, nbd: { ok: true, reason: 'NBD export nbd://h/d0' } });
      expect(await chooseTransport('nbd', disk(), from, where)).to.include({ name: 'nbd', reason: 'job asks for nbd: NBD export nbd://h/d0' });
      const refused = transports({ hotadd: { ok: true, reason: 'image readable' }, nbd: { ok: false, reason: 'no export' } });
      const err = await chooseTransport('nbd', disk(), refused, where).catch((e: FerryError) => e);
      expect(err).to.be.instanceOf(FerryError).with.property('code', 'TRANSPORT_UNAVAILABLE');
      expect((err as FerryError).message).to.include('no transport mode can read the disk (nbd: no export)');
    });

    it('TRANSPORT_UNAVAILABLE lists what auto tried, and names the proxy when a proxy reads', async function () {
      const from = transports({ hotadd: { ok: false, reason: 'no path' }, nbd: { ok: false, reason: 'no export' } }, 'this proxy');
      const err = (await chooseTransport('auto', disk(), from, where).catch((e: FerryError) => e)) as FerryError;
      expect(err.code).to.equal('TRANSPORT_UNAVAILABLE');
      expect(err.message).to.include('no transport mode of this proxy can read the disk (auto tried hotadd: no path; nbd: no export)');
      expect(err.where).to.include(where);
    });

    it('a probe that throws is stamped with the plugin and the hook', async function () {
      const from = transports({});
      from.available = () => ['broken'];
      from.create = async () => ({ open: async () => handle(), probe: async () => Promise.reject(new Error('boom')) });
      const err = (await chooseTransport('auto', disk(), from, where).catch((e: FerryError) => e)) as FerryError;
      expect(err.where).to.include({ plugin: '@ferry/transport-broken', hook: 'probe' });
    });
  });

  describe('skip extents', function () {
    const ctx = { size: 64 * BLOCK, read: async (_o: number, l: number): Promise<Uint8Array> => new Uint8Array(l) };

    it("merges the filters' ranges in offset order; filters without skipExtents skip nothing", async function () {
      const filters = [
        { name: 'zero', impl: { classify: (): 'keep' => 'keep' } },
        { name: 'swap', impl: { skipExtents: async () => [{ offset: 4 * BLOCK, length: BLOCK }] } },
        { name: 'pagefile', impl: { skipExtents: async () => [{ offset: BLOCK, length: BLOCK }] } },
      ];
      expect(await skipExtents(filters, disk(), {}, ctx)).to.deep.equal([
        { offset: BLOCK, length: BLOCK },
        { offset: 4 * BLOCK, length: BLOCK },
      ]);
      expect(await skipExtents([], disk(), {}, ctx)).to.deep.equal([]);
    });

    it('a filter that throws is stamped with its name and the hook', async function () {
      const filters = [{ name: 'swap', impl: { skipExtents: async (): Promise<Extent[]> => Promise.reject(new Error('no guest')) } }];
      const err = (await skipExtents(filters, disk(), { vm: 'vm1', disk: 'd0' }, ctx).catch((e: FerryError) => e)) as FerryError;
      expect(err.where).to.include({ plugin: 'swap', hook: 'skipExtents', disk: 'd0' });
    });

    it("adds the disk's own skipExtents (a guest runtime's report) as the ranges of filter 'guest'", async function () {
      const filters = [{ name: 'swap', impl: { skipExtents: async () => [{ offset: 4 * BLOCK, length: BLOCK }] } }];
      const d = { ...disk(), skipExtents: [{ offset: BLOCK + 4096, length: BLOCK }] };
      const got = await skipExtents(filters, d, {}, ctx);
      expect(got).to.deep.equal([{ offset: BLOCK + 4096, length: BLOCK }, { offset: 4 * BLOCK, length: BLOCK }]);
      expect(skipRangeFilter.get(got[0]!)).to.equal('guest');
      const bad = { ...disk(), skipExtents: [{ offset: 64 * BLOCK, length: 1 }] };
      const err = (await skipExtents([], bad, {}, ctx).catch((e: FerryError) => e)) as FerryError;
      expect(err.code).to.equal('PLUGIN_CONTRACT');
      expect(err.where).to.include({ plugin: 'guest' });
    });

    it('hands the filter the open disk, and refuses ranges outside it (PLUGIN_CONTRACT)', async function () {
      let seen: number | undefined;
      const reader = { name: 'swap', impl: { skipExtents: async (_d: unknown, c: { size: number; read: (o: number, l: number) => Promise<Uint8Array> }) => {
        seen = (await c.read(0, 512)).length + c.size;
        return [];
      } } };
      await skipExtents([reader], disk(), {}, ctx);
      expect(seen).to.equal(512 + 64 * BLOCK);
      for (const bad of [{ offset: 63 * BLOCK, length: 2 * BLOCK }, { offset: -1, length: 2 }, { offset: 0, length: 0 }, { offset: 0.5, length: 1 }]) {
        const filters = [{ name: 'swap', impl: { skipExtents: async () => [bad] } }];
        const err = (await skipExtents(filters, disk(), {}, ctx).catch((e: FerryError) => e)) as FerryError;
        expect(err.code, JSON.stringify(bad)).to.equal('PLUGIN_CONTRACT');
        expect(err.where).to.include({ plugin: 'swap', hook: 'skipExtents' });
      }
    });
  });
});
