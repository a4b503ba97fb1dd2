import { expect } from 'chai';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FerryError, type ReportedError } from '../../errors.js';
import { Repository } from '../../repository/repository.js';
import { WorkerBlockCodec } from '../../pipe/worker-block-codec.js';
import { createPluginHost } from '../../session/job-runtime.js';
import { MemoryBackend } from '../../testing/memory-backend.js';
import { makeVmImage } from '../../testing/vm-image.js';
import { connectionPair, PIPE_VERSION, type Connection, type WireMessage } from '../wire/index.js';
import { ControlChannel, controlRequestProblem, readTaskProblem, type ReadTask } from './protocol.js';
import { ProxyService } from './proxy-service.js';
import { RepositoryService } from './repository-service.js';

/**
 * Malformed control and data-pipe messages, sent over the wire layer's framed connections: each is
 * answered with PIPE_PROTOCOL naming the verb and the field, and the same service then serves a
 * good request (one bad message never stops a service, and is never INTERNAL).
 */
describe('typed protocol: malformed messages', function () {
  this.timeout(60_000);
  let dir: string;
  let image: string;
  let codec: WorkerBlockCodec;
  let proxy: ProxyService;

  before(async function () {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ferry-protocol-'));
    image = path.join(dir, 'disk0.raw');
    await makeVmImage(image, { sizeBytes: 4 * 1024 * 1024, seed: 7 });
    const plugins = await createPluginHost();
    codec = new WorkerBlockCodec(plugins.options, 1);
    proxy = new ProxyService({ plugins, codec: () => codec, taskSlots: 2 });
  });

  after(async function () {
    await codec?.close();
    await fs.rm(dir, { recursive: true, force: true });
  });

  function repositoryService(): RepositoryService {
    const backend = new MemoryBackend();
    return new RepositoryService({
      openRepository: (o) => Repository.open(backend, o),
      codec: () => codec,
      auth: { kind: 'psk', key: Buffer.alloc(32, 1), identity: 'test', role: 'repository' },
    });
  }

  /** A raw control connection: what it sends is up to the test. */
  function rawControl(svc: RepositoryService): Connection {
    const [a, b] = connectionPair({ roles: ['server', 'repository'] });
    void svc.serve(b);
    return a;
  }

  async function ask(conn: Connection, header: Record<string, unknown>): Promise<{ ok: boolean; result?: unknown; error?: ReportedError }> {
    await conn.send({ type: 'req', header });
    for (;;) {
      const m = await conn.receive();
      if (!m) throw new Error('the service closed the connection');
      if (m.type === 'res' && m.header?.id === header.id) return m.header as { ok: boolean; result?: unknown; error?: ReportedError };
    }
  }

  const malformed: [string, Record<string, unknown>, string][] = [
    ['point.discard', { diskIds: ['a', 'b', 3] }, 'point.discard: header.diskIds[2] must be a string'],
    ['session.open', { job: 'j', session: 's', vms: 'vm1' }, 'session.open: header.vms must be an array'],
    ['session.open', { job: 'j', vms: ['vm1'] }, 'session.open: header.session must be a non-empty string'],
    ['points.list', { vm: 7 }, 'points.list: header.vm must be a non-empty string'],
    ['disk.receive', { order: { session: 's', vm: 'vm1', disk: { name: 'd' }, proxy: 'p:1', transport: 'auto', filters: ['zero'], compressor: { name: 'zstd', level: 3 }, blockSize: 3000 } }, 'disk.receive: header.order.blockSize must be a power of two'],
    ['disk.receive', { order: null }, 'disk.receive: header.order must be an object'],
    ['disk.receive', { order: { session: 's', vm: 'vm1', disk: { name: 'd' }, proxy: 'p:1', transport: 'nbd', transportOptions: [4], filters: ['zero'], compressor: { name: 'zstd', level: 3 }, blockSize: 262144 } }, 'disk.receive: header.order.transportOptions must be an object'],
    ['disk.receive', { order: { session: 's', vm: 'vm1', disk: { name: 'd' }, proxy: 'p:1', transport: 'auto', filters: ['zero'], filterOptions: ['x'], compressor: { name: 'zstd', level: 3 }, blockSize: 262144 } }, 'disk.receive: header.order.filterOptions[0] must be an object'],
    ['point.commit', { vm: 'vm1', point: { id: 'p', job: 'j', session: 's', createdAt: 'now' }, disks: [{ diskId: 'x', name: 'd', zeroBlocks: -1, transport: 't', mode: 'full' }] }, 'point.commit: header.disks[0].zeroBlocks must be an integer'],
    ['session.end', { vms: [], retention: { restorePoints: 0 } }, 'session.end: header.retention.restorePoints must be an integer from 1'],
    ['restore.open', { vm: 'vm1', disk: 'd', point: 'p', from: 1.5 }, 'restore.open: header.from must be an integer'],
    ['restore.open', { vm: 'vm1', disk: 'd' }, 'restore.open: header.point must be a non-empty string'],
  ];

  it('the validators name the verb and the field', function () {
    for (const [op, args, message] of malformed) {
      const err = controlRequestProblem({ id: 1, op, ...args });
      expect(err, op).to.be.instanceOf(FerryError);
      expect(err!.code).to.equal('PIPE_PROTOCOL');
      expect(err!.detail).to.contain(message);
    }
    expect(controlRequestProblem({ id: 1, op: 'session.open', job: 'j', session: 's', vms: ['vm1'] })).to.equal(undefined);
    expect(controlRequestProblem({ id: 'one', op: 'session.abort' })?.detail).to.equal('session.abort: header.id must be an integer');
    expect(controlRequestProblem({ id: 1, op: 'toString' })?.detail).to.equal('unknown request "toString"');
    expect(controlRequestProblem(null)?.code).to.equal('PIPE_PROTOCOL');
  });

  it('a read task carries an options object for its transport and one for each filter', function () {
    const task: ReadTask = { version: PIPE_VERSION, taskId: 't', vm: 'vm1', disk: { name: 'd' }, transport: 'nbd', filters: ['zero', 'marker'], compressor: { name: 'zstd', level: 3 }, blockSize: 262144, readAhead: 4, window: 8, resumeFrom: 0 };
    expect(readTaskProblem(task)).to.equal(undefined);
    expect(readTaskProblem({ ...task, transportOptions: { connections: 2 }, filterOptions: [{}, { marker: 'SCRATCH-7' }] })).to.equal(undefined);
    expect(readTaskProblem({ ...task, transportOptions: 'tls' as never })).to.equal('transportOptions must be an object');
    expect(readTaskProblem({ ...task, filterOptions: [{ marker: 'SCRATCH-7' }] })).to.equal('filterOptions must be an object for each of filters');
    expect(readTaskProblem({ ...task, filterOptions: [{}, null as never] })).to.equal('filterOptions must be an object for each of filters');
  });

  it('the repository service answers each malformed request with PIPE_PROTOCOL and keeps serving the connection', async function () {
    const svc = repositoryService();
    const conn = rawControl(svc);
    try {
      let id = 1;
      for (const [op, args, message] of malformed) {
        const res = await ask(conn, { id: id++, op, ...args });
        expect(res.ok, op).to.equal(false);
        expect(res.error?.code, op).to.equal('PIPE_PROTOCOL');
        expect(res.error?.message, op).to.contain(message);
      }
      const opened = await ask(conn, { id: id++, op: 'session.open', job: 'j', session: 's1', vms: ['vm1'] });
      expect(opened.ok).to.equal(true);
      expect(opened.result).to.have.property('location').that.is.a('string');
      const listed = await ask(conn, { id: id++, op: 'points.list', vm: 'vm1' });
      expect(listed).to.deep.include({ ok: true });
      expect((listed.result as { points: unknown[] }).points).to.deep.equal([]);
      const ended = await ask(conn, { id: id++, op: 'session.end', vms: [] });
      expect(ended.ok).to.equal(true);
    } finally {
      await conn.close();
      await svc.close();
    }
  });

  it('the backup server refuses an answer it cannot use: PIPE_PROTOCOL naming the verb and the field', async function () {
    const [a, b] = connectionPair({ roles: ['server', 'repository'] });
    const channel = new ControlChannel(a, { host: 'repo-test' });
    const fake = (async () => {
      for (;;) {
        const m = await b.receive();
        if (!m) return;
        const h = m.header as { id: number; op: string };
        const result = h.op === 'session.open' ? { location: 5 } : { points: [] };
        await b.send({ type: 'res', header: { id: h.id, ok: true, result } });
      }
    })();
    try {
      const err = await channel.request('session.open', { job: 'j', session: 's', vms: [] }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).to.be.instanceOf(FerryError);
      expect((err as FerryError).code).to.equal('PIPE_PROTOCOL');
      expect((err as FerryError).detail).to.equal('session.open answer: result.location must be a string');
      expect((err as FerryError).where.host).to.equal('repo-test');
      expect(await channel.request('points.list', {})).to.deep.equal({ points: [] });
    } finally {
      await channel.close();
      await fake;
    }
  });

  function task(taskId: string): ReadTask {
    return {
      version: PIPE_VERSION,
      taskId,
      vm: 'vm1',
      disk: { name: 'disk0.raw', path: image, format: 'raw' },
      transport: 'auto',
      filters: [],
      compressor: { name: 'deflate', level: 6 },
      blockSize: 256 * 1024,
      readAhead: 2,
      window: 1,
      resumeFrom: 0,
    };
  }

  /** Reads a data pipe to its end, answering `known?` with "not held" and acknowledging every record. */
  async function drain(conn: Connection, onBlock: (m: WireMessage) => Promise<boolean>): Promise<WireMessage> {
    for (;;) {
      const m = await conn.receive();
      if (!m) throw new Error('the proxy closed the data pipe');
      if (m.type === 'known?') {
        await conn.send({ type: 'known!', header: { q: m.header?.q, have: (m.header?.hashes as string[]).map(() => false) } });
      } else if (m.type === 'block') {
        if (!(await onBlock(m))) continue;
      } else if (m.type === 'end' || m.type === 'error') {
        return m;
      }
    }
  }

  it('the proxy answers a malformed ack with PIPE_PROTOCOL and then serves a good task', async function () {
    const [bad, badEnd] = connectionPair({ roles: ['repository', 'proxy'] });
    const served = proxy.serve(badEnd);
    await bad.send({ type: 'task', header: { ...task('t-bad') } });
    const ok = await bad.receive();
    expect(ok?.type, JSON.stringify(ok?.header)).to.equal('task.ok');
    const failed = await drain(bad, async () => {
      await bad.send({ type: 'ack', header: { upTo: 'all of them' } });
      return false;
    });
    expect(failed.type).to.equal('error');
    const error = failed.header?.error as ReportedError;
    expect(error.code).to.equal('PIPE_PROTOCOL');
    expect(error.message).to.equal('ack: header.upTo must be an integer from 0 to 9007199254740991');
    expect(error.where).to.include({ vm: 'vm1', disk: 'disk0.raw' });
    await bad.close();
    await served;

    const [good, goodEnd] = connectionPair({ roles: ['repository', 'proxy'] });
    const servedGood = proxy.serve(goodEnd);
    await good.send({ type: 'task', header: { ...task('t-good') } });
    expect((await good.receive())?.type).to.equal('task.ok');
    const end = await drain(good, async (m) => {
      await good.send({ type: 'ack', header: { upTo: Number(m.header?.i) + 1 } });
      return true;
    });
    expect(end.type).to.equal('end');
    expect(end.header?.bytesRead).to.be.greaterThan(0);
    await good.send({ type: 'done' });
    await good.close();
    await servedGood;
  });
});
