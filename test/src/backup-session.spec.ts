import { spawn } from 'node:child_process';
import { closeSync, cpSync, existsSync, mkdirSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { initCerts } from '@ferry/core/remote/wire';
import { firstDifference, makeVmImage, Prng } from '@ferry/core/testing';
import { FIXTURE_PLUGINS } from './support/gated-backup.js';
import { FERRY_BIN, json, ROOT, runFerry, tempDir, writeJob, type CliResult } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';
import { flipBit, pointDisks, storedBlocks } from './support/repo-inspect.js';

type Placement = 'embedded' | 'remote';

interface Report {
  status: string;
  healedBlocks: number;
  vms: { vm: string; status: string; restorePoint: string | null; error?: { code: string } }[];
  disks: {
    vm: string;
    disk: string;
    status: string;
    mode: string;
    modeReason: string;
    restorePoint: string | null;
    blocks: { new: number; healed: number; total: number; filtered?: Record<string, number> };
    error?: { code: string; message: string; where: Record<string, unknown> };
  }[];
}

const MiB = 1024 * 1024;
/** A third party's block filter with options (`marker`, `at`): the job's `plugins:` and the proxy's FERRY_PLUGIN_PATH name it. */
const MARKER_FILTER = path.join(ROOT, 'test', 'fixtures', 'third-party', 'ferry-marker-filter');
const MARKER = 'SCRATCH-7';

/** The disk entries of one point's manifest (unencrypted, read from the file). */
function manifestDisks(repo: string, vm: string, point: string): Record<string, unknown>[] {
  return (JSON.parse(readFileSync(path.join(repo, 'points', vm, `${point}.json`), 'utf8')) as { disks: Record<string, unknown>[] }).disks;
}

/**
 * One backup session whatever the placement of the data movers: the same suite runs with both in
 * this process (embedded) and with `ferry proxy serve` + `ferry repository serve` on loopback
 * (remote). The session loop is shared; only where disks are read and points committed differs.
 */
function sessionSpec(placement: Placement): void {
  describe(`one backup session, ${placement} data movers`, function () {
    this.timeout(180_000);
    const t = tempDir(`ferry-session-${placement}-`);
    const ds = path.join(t.dir, 'images');
    const repo = path.join(t.dir, 'repo');
    const certs = path.join(t.dir, 'certs');
    const services: ServiceProcess[] = [];
    const gated = { a1: path.join(ds, 'vma', 'a1.raw'), a2: path.join(ds, 'vma', 'a2.raw'), b1: path.join(ds, 'vmb', 'b1.raw') };
    const tracked = path.join(ds, 'vmc', 'c1.raw');

    before(async function () {
      for (const d of ['vma', 'vmb', 'vmc']) mkdirSync(path.join(ds, d), { recursive: true });
      await makeVmImage(gated.a1, { sizeBytes: 3 * MiB, seed: 81, holes: 0.1 });
      await makeVmImage(gated.a2, { sizeBytes: 3 * MiB, seed: 82, holes: 0.1 });
      await makeVmImage(gated.b1, { sizeBytes: 3 * MiB, seed: 83, holes: 0.1 });
      await makeVmImage(tracked, { sizeBytes: 16 * MiB, seed: 84, holes: 0.1 });
      if (placement === 'remote') {
        await initCerts(certs);
        // The proxy reads through the test-only transports and the job's third-party filter too.
        const pluginPath = [FIXTURE_PLUGINS, MARKER_FILTER].join(path.delimiter);
        services.push(await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs], 20_000, { FERRY_PLUGIN_PATH: pluginPath }));
        services.push(await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', repo]));
      }
    });

    after(async function () {
      for (const d of Object.values(gated)) writeFileSync(`${d}.gate`, '');
      await Promise.all(services.map((s) => s.stop()));
      t.cleanup();
    });

    /** A job in this placement: the repository folder, or the repository service and the proxy. */
    function job(name: string, lines: string[]): string {
      const where =
        placement === 'embedded'
          ? ['repository: { type: filesystem, path: ./repo }']
          : [`repository: { server: ${JSON.stringify(services[1].address)} }`, `proxies: [ { address: ${JSON.stringify(services[0].address)} } ]`, `certs: ${certs}`];
      return writeJob(t.dir, [`job: ${name}`, `plugins: [${FIXTURE_PLUGINS}, ${MARKER_FILTER}]`, ...lines, ...where, 'storage: { blockSize: 256KiB, compression: optimal }'].join('\n'), `${name}.yaml`);
    }

    const gatedJob = (): string =>
      job('gated', [
        'source:',
        '  host: file',
        '  datastore: ./images',
        '  vms:',
        '    - { name: vma, disks: [vma/a1.raw, vma/a2.raw] }',
        '    - { name: vmb, disks: [vmb/b1.raw] }',
        'transport: gated-read',
        'parallelDisks: 2',
      ]);
    const trackedJob = (): string => job('tracked', ['source: { host: cbt-sim, datastore: ./images, vms: [ { name: vmc, disks: [vmc/c1.raw] } ] }']);

    const points = async (j: string): Promise<string[]> => json<{ restorePoints: { id: string }[] }>(await runFerry(['list', j, '--json'])).restorePoints.map((p) => p.id);

    function closeGates(): void {
      for (const d of Object.values(gated)) {
        rmSync(`${d}.gate`, { force: true });
        rmSync(`${d}.waiting`, { force: true });
      }
    }

    /** `ferry backup` of the gated job in a child process, to watch its gates and signal it. */
    function startBackup(): { child: ReturnType<typeof spawn>; done: Promise<CliResult>; exited: () => string | undefined; stderr: () => string } {
      const child = spawn(process.execPath, [FERRY_BIN, 'backup', gatedJob(), '--json'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout!.on('data', (d) => (stdout += d));
      child.stderr!.on('data', (d) => (stderr += d));
      let result: CliResult | undefined;
      const done = new Promise<CliResult>((resolve) => child.on('close', (code, signal) => resolve((result = { code, signal, stdout, stderr }))));
      return { child, done, exited: () => (result ? `${result.stdout}\n${result.stderr}` : undefined), stderr: () => stderr };
    }

    async function until(what: string, cond: () => boolean, exited: () => string | undefined): Promise<void> {
      const deadline = Date.now() + 60_000;
      while (!cond()) {
        const out = exited();
        if (out !== undefined) throw new Error(`the backup ended before ${what}:\n${out}`);
        if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }

    const names = Object.keys(gated) as (keyof typeof gated)[];
    const atGate = (): (keyof typeof gated)[] => names.filter((n) => existsSync(`${gated[n]}.waiting`));

    it('backs up two VMs at once within parallelDisks: a third disk starts only when a slot frees', async function () {
      closeGates();
      const b = startBackup();
      try {
        await until('two disks both wait at their gates', () => atGate().length >= 2, b.exited);
        const first = atGate();
        expect(first, 'a third disk started beyond parallelDisks: 2').to.have.length(2);
        const third = names.find((n) => !first.includes(n))!;
        // A session that backs up its VMs one after another never starts the third disk here when
        // the first two are both of vma: only a slot, not the end of a VM, frees it.
        writeFileSync(`${gated[first[1]]}.gate`, '');
        await until(`${third} takes the slot ${first[1]} gave back`, () => existsSync(`${gated[third]}.waiting`), b.exited);
      } finally {
        for (const d of Object.values(gated)) writeFileSync(`${d}.gate`, '');
      }
      const r = await b.done;
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const rep = json<Report>(r);
      expect(rep.vms.map((v) => [v.vm, v.status])).to.deep.equal([
        ['vma', 'success'],
        ['vmb', 'success'],
      ]);
      expect(rep.disks.map((d) => `${d.vm}/${d.disk}`)).to.deep.equal(['vma/vma/a1.raw', 'vma/vma/a2.raw', 'vmb/vmb/b1.raw']);
      for (const d of rep.disks) expect(d.restorePoint, d.disk).to.be.a('string');
      const out = path.join(t.dir, 'restored-b1.raw');
      const rr = await runFerry(['restore', gatedJob(), '--vm', 'vmb', '--disk', 'vmb/b1.raw', '--point', 'latest', '--to', out]);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(await firstDifference(gated.b1, out)).to.equal(-1);
    });

    it('stops on Ctrl-C: exit 130, nothing unfinished committed, the next session succeeds', async function () {
      closeGates();
      const before = await points(gatedJob());
      const b = startBackup();
      try {
        await until('two disks both wait at their gates', () => atGate().length >= 2, b.exited);
        b.child.kill('SIGINT');
        // Once the CLI has taken the signal, the readers may go on: the session stops at their next block.
        await until('the CLI takes the signal', () => /stopping the session/.test(b.stderr()), b.exited);
      } finally {
        for (const d of Object.values(gated)) writeFileSync(`${d}.gate`, '');
      }
      const r = await b.done;
      expect(r.code, r.stdout + r.stderr).to.equal(130);
      const rep = json<Report>(r);
      expect(rep.status).to.equal('failed');
      for (const v of rep.vms) {
        expect(v.restorePoint, v.vm).to.equal(null);
        expect(v.error?.code, v.vm).to.equal('SESSION_INTERRUPTED');
      }
      expect(rep.disks.map((d) => `${d.vm}/${d.disk}`)).to.deep.equal(['vma/vma/a1.raw', 'vma/vma/a2.raw', 'vmb/vmb/b1.raw']);
      for (const d of rep.disks) expect(d.status, d.disk).to.equal('failed');
      expect(await points(gatedJob())).to.deep.equal(before);
      const again = await runFerry(['backup', gatedJob(), '--json']);
      expect(again.code, again.stdout + again.stderr).to.equal(0);
      expect((await points(gatedJob())).length).to.equal(before.length + 2);
    });

    it('runs incremental on the host\'s changes, and a damaged block is read again by the next backup (heal)', async function () {
      const j = trackedJob();
      const full = json<Report>(await runFerry(['backup', j, '--json']));
      expect(full.status).to.equal('success');
      expect(full.disks[0].mode).to.equal('full');
      // incremental: only the changed blocks are read
      const changed = [{ offset: 3 * 256 * 1024 + 4096, length: 8192 }];
      const fd = openSync(tracked, 'r+');
      writeSync(fd, new Prng(5).fill(Buffer.alloc(8192)), 0, 8192, changed[0].offset);
      closeSync(fd);
      writeFileSync(`${tracked}.changes.json`, JSON.stringify({ since: full.disks[0].restorePoint, extents: changed }));
      const inc = json<Report>(await runFerry(['backup', j, '--json']));
      expect(inc.status).to.equal('success');
      expect(inc.disks[0].mode, inc.disks[0].modeReason).to.equal('incremental');
      expect(inc.disks[0].blocks.new).to.equal(1);
      // heal: damage a block of the latest point; the health check records it; the next run stores it again
      const latest = pointDisks(repo).find((d) => d.point === inc.disks[0].restorePoint)!;
      const used = new Set(latest.hashes.filter((h): h is string => h !== undefined));
      const victim = storedBlocks(repo).find((b) => used.has(b.hash))!;
      flipBit(victim, new Prng(3));
      const verifyArgs = placement === 'embedded' ? ['verify', j, '--json'] : ['verify', '--repository', repo, '--json'];
      const v = await runFerry(verifyArgs);
      expect(json<{ status: string }>(v).status, v.stdout + v.stderr).to.equal('damaged');
      writeFileSync(`${tracked}.changes.json`, JSON.stringify({ since: inc.disks[0].restorePoint, extents: [] }));
      const healed = json<Report>(await runFerry(['backup', j, '--json']));
      expect(healed.status).to.equal('success');
      expect(healed.disks[0].mode).to.equal('incremental');
      expect(healed.disks[0].modeReason).to.include('self-heal');
      expect(healed.disks[0].blocks.healed).to.be.at.least(1);
      expect(healed.healedBlocks).to.equal(healed.disks[0].blocks.healed);
      const out = path.join(t.dir, 'restored-c1.raw');
      const rr = await runFerry(['restore', j, '--vm', 'vmc', '--disk', 'vmc/c1.raw', '--point', 'latest', '--to', out]);
      expect(rr.code, rr.stderr).to.equal(0);
      expect(await firstDifference(tracked, out)).to.equal(-1);
    });

    it('reports the blocks a filter dropped (blocks.filtered) and records them in the manifest', async function () {
      const marked = path.join(ds, 'vmd', 'd1.raw');
      mkdirSync(path.dirname(marked), { recursive: true });
      await makeVmImage(marked, { sizeBytes: 4 * MiB, seed: 85, holes: 0 });
      const fd = openSync(marked, 'r+');
      for (const block of [3, 9]) writeSync(fd, Buffer.from('FERRY-SCRATCH'), 0, 13, block * 256 * 1024);
      closeSync(fd);
      const j = job('marked', ['source: { host: file, datastore: ./images, vms: [ { name: vmd, disks: [vmd/d1.raw] } ] }', 'filters: [zero, scratch-marker]']);
      const r = await runFerry(['backup', j, '--json']);
      expect(r.code, r.stderr).to.equal(0);
      const disk = json<Report>(r).disks[0];
      expect(disk.blocks.filtered?.['scratch-marker'], JSON.stringify(disk)).to.equal(2);
      const entry = manifestDisks(repo, 'vmd', disk.restorePoint!)[0];
      expect(entry?.filtered).to.deep.equal({ 'scratch-marker': 2 }); // the built-in zero filter drops no data
    });

    /** A 4 MiB disk whose block 3 carries the marker at byte 16 and block 5 at byte 0. */
    async function markedAt(file: string): Promise<void> {
      mkdirSync(path.dirname(file), { recursive: true });
      await makeVmImage(file, { sizeBytes: 4 * MiB, seed: 86, holes: 0 });
      const fd = openSync(file, 'r+');
      writeSync(fd, Buffer.from(MARKER), 0, MARKER.length, 3 * 256 * 1024 + 16);
      writeSync(fd, Buffer.from(MARKER), 0, MARKER.length, 5 * 256 * 1024);
      closeSync(fd);
    }

    it('configures a filter from the job file alone: its options reach it wherever it runs', async function () {
      await markedAt(path.join(ds, 'vme', 'e1.raw'));
      const j = job('optioned', ['source: { host: file, datastore: ./images, vms: [ { name: vme, disks: [vme/e1.raw] } ] }', `filters: [zero, { name: marker, marker: ${MARKER}, at: 16 }]`]);
      const r = await runFerry(['backup', j, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(0);
      const disk = json<Report>(r).disks[0];
      // block 3 carries the marker where the job says (at 16): dropped; block 5 (at 0) is kept
      expect(disk.blocks.filtered?.marker, JSON.stringify(disk)).to.equal(1);
      expect(manifestDisks(repo, 'vme', disk.restorePoint!)[0]?.filtered).to.deep.equal({ marker: 1 });
    });

    if (placement === 'remote') {
      it("fails the disk with REMOTE_PLUGIN_OPTIONS when the proxy's version of a filter refuses an option", async function () {
        // The proxy has an older ferry-marker-filter whose configSchema does not know `at`.
        const old = path.join(t.dir, 'old-plugins', 'ferry-marker-filter');
        cpSync(MARKER_FILTER, old, { recursive: true });
        const index = readFileSync(path.join(old, 'index.js'), 'utf8');
        const withoutAt = index.replace(/^ *at: \{[^\n]*\n/m, '');
        expect(withoutAt).to.not.equal(index);
        writeFileSync(path.join(old, 'index.js'), withoutAt);
        const proxy = await startService(['proxy', 'serve', '--listen', '127.0.0.1:0', '--certs', certs], 20_000, { FERRY_PLUGIN_PATH: [FIXTURE_PLUGINS, old].join(path.delimiter) });
        services.push(proxy);
        await markedAt(path.join(ds, 'vmf', 'f1.raw'));
        const j = writeJob(
          t.dir,
          [
            'job: old-proxy',
            `plugins: [${FIXTURE_PLUGINS}, ${MARKER_FILTER}]`,
            'source: { host: file, datastore: ./images, vms: [ { name: vmf, disks: [vmf/f1.raw] } ] }',
            `filters: [zero, { name: marker, marker: ${MARKER}, at: 16 }]`,
            `repository: { server: ${JSON.stringify(services[1].address)} }`,
            `proxies: [ { address: ${JSON.stringify(proxy.address)} } ]`,
            `certs: ${certs}`,
          ].join('\n'),
          'old-proxy.yaml',
        );
        const r = await runFerry(['backup', j, '--json']);
        expect(r.code, r.stdout + r.stderr).to.not.equal(0);
        const disk = json<Report>(r).disks[0];
        expect(disk.status).to.equal('failed');
        expect(disk.error?.code, JSON.stringify(disk.error)).to.equal('REMOTE_PLUGIN_OPTIONS');
        expect(disk.error?.where).to.include({ host: proxy.address, plugin: 'ferry-marker-filter', path: 'filters[1].at', vm: 'vmf', disk: 'vmf/f1.raw' });
        expect(disk.error?.message).to.include('filters[1].at').and.include('ferry-marker-filter');
      });
    }
  });
}

sessionSpec('embedded');
sessionSpec('remote');
