import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { JobRuntime, openPointAccess, openPointReader } from '@ferry/core';
import { initCerts } from '@ferry/core/remote/wire';
import { changeVmImage, makeVmImage, Prng } from '@ferry/core/testing';
import { basicJob, json, runFerry, tempDir, writeJob } from './support/helpers.js';
import { startService, type ServiceProcess } from './support/remote-services.js';

const MiB = 1024 * 1024;

/**
 * The random-access reader of a restore point (what `ferry serve` and `ferry files` read through),
 * against the job's repository in this process and against a repository service serving it.
 */
describe('restore point reader: random access, embedded and through a repository service', function () {
  this.timeout(120_000);
  const t = tempDir('ferry-point-reader-');
  const image = path.join(t.dir, 'images', 'vm.raw');
  const certs = path.join(t.dir, 'certs');
  let job: string;
  let remoteJob: string;
  let service: ServiceProcess | undefined;
  const points: { id: string; bytes: Buffer }[] = [];

  before(async function () {
    mkdirSync(path.join(t.dir, 'images'));
    await makeVmImage(image, { sizeBytes: 12 * MiB + 1000, seed: 41, holes: 0.3 });
    job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], blockSize: '256KiB' }));
    for (let run = 0; run < 2; run++) {
      if (run) await changeVmImage(image, { count: 20, length: 8192, seed: 9 });
      const r = await runFerry(['backup', job, '--json']);
      expect(r.code, r.stderr + r.stdout).to.equal(0);
      copyFileSync(image, path.join(t.dir, `point${run}.raw`));
    }
    const listed = json<{ restorePoints: { id: string }[] }>(await runFerry(['list', job, '--json']));
    listed.restorePoints.forEach((p, i) => points.push({ id: p.id, bytes: readFileSync(path.join(t.dir, `point${i}.raw`)) }));
    await initCerts(certs);
    service = await startService(['repository', 'serve', '--listen', '127.0.0.1:0', '--certs', certs, '--repository', path.join(t.dir, 'repo')]);
    remoteJob = writeJob(
      t.dir,
      basicJob({ disks: ['vm.raw'], blockSize: '256KiB' }).replace(/repository:\n {2}type: filesystem\n {2}path: \.\/repo/, `repository:\n  server: "${service.address}"\nproxies:\n  - address: "127.0.0.1:1"\ncerts: ./certs`),
      'remote.yaml',
    );
  });
  after(async function () {
    await service?.stop();
    t.cleanup();
  });

  it('remote: a reader goes on after the repository service restarts (the connection is made again)', async function () {
    const rt = await JobRuntime.open(remoteJob, { sourceMayBeGone: true });
    try {
      const reader = await openPointReader(rt, { vm: 'web01', point: points[1].id, disk: 'vm.raw' }, { cacheBytes: MiB, readAhead: 0 });
      try {
        const half = Math.floor(reader.size / 2);
        expect((await reader.read(0, half)).equals(points[1].bytes.subarray(0, half))).to.equal(true);
        const address = service!.address;
        await service!.kill();
        const restarted = startService(['repository', 'serve', '--listen', address, '--certs', certs, '--repository', path.join(t.dir, 'repo')]);
        const rest = reader.read(half, reader.size - half);
        service = await restarted;
        expect((await rest).equals(points[1].bytes.subarray(half))).to.equal(true);
      } finally {
        await reader.close();
      }
    } finally {
      await rt.close();
    }
  });

  for (const where of ['embedded', 'remote'] as const) {
    it(`${where}: random ranges of a full and an incremental point read byte-identical; allocation marks holes`, async function () {
      const rt = await JobRuntime.open(where === 'embedded' ? job : remoteJob, { sourceMayBeGone: true });
      try {
        for (const p of points) {
          const reader = await openPointReader(rt, { vm: 'web01', point: p.id, disk: 'vm.raw' }, { cacheBytes: MiB });
          try {
            expect(reader.size).to.equal(p.bytes.length);
            expect((await reader.read(0, reader.size)).equals(p.bytes)).to.equal(true);
            const rng = new Prng(7);
            await Promise.all(
              Array.from({ length: 40 }, async () => {
                const off = rng.int(reader.size);
                const len = Math.min(reader.size - off, rng.int(300_000));
                expect((await reader.read(off, len)).equals(p.bytes.subarray(off, off + len)), `${off}+${len}`).to.equal(true);
              }),
            );
            const alloc = reader.allocation(0, reader.size);
            expect(alloc.reduce((n, a) => n + a.length, 0)).to.equal(reader.size);
            expect(alloc.some((a) => a.zero)).to.equal(true);
            for (const a of alloc.filter((x) => x.zero)) expect(p.bytes.subarray(a.offset, a.offset + a.length).every((b) => b === 0)).to.equal(true);
          } finally {
            await reader.close();
          }
        }
        const access = await openPointAccess(rt, { vm: 'web01', point: 'latest' });
        try {
          expect(access.point.id).to.equal(points[1].id);
          await access.openDisk('nope.raw').then(
            () => expect.fail('no such disk'),
            (err) => expect(err.code).to.equal('RESTORE_NOT_FOUND'),
          );
        } finally {
          await access.close();
        }
      } finally {
        await rt.close();
      }
    });
  }
});
