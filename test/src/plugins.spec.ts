import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { createPluginHost, discoverPlugins, JobRuntime, runBackup, restoreDisk, FerryError, supportedApiRange } from '@ferry/core';
import { firstDifference, makeVmImage } from '@ferry/core/testing';
import { basicJob, json, ROOT, runFerry, tempDir, writeJob } from './support/helpers.js';

const EXAMPLES = path.join(ROOT, 'test', 'fixtures', 'plugins');

function fakePlugin(dir: string, name: string, ferry: unknown, entry = 'export function register() {}'): string {
  const pkg = path.join(dir, name);
  mkdirSync(pkg, { recursive: true });
  writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name, version: '0.0.1', type: 'module', ferry }));
  writeFileSync(path.join(pkg, 'index.js'), entry);
  return pkg;
}

describe('plugin discovery and loading', function () {
  const t = tempDir();
  after(() => t.cleanup());

  it('finds the workspace plugins and the built-ins without importing anything', async function () {
    const host = await createPluginHost({ pluginPath: '' });
    const names = host.discovery.plugins.map((p) => p.packageName);
    expect(names).to.include.members(['@ferry/source-file', '@ferry/repo-filesystem', '@ferry/transport-hotadd']);
    expect(host.available('compressor').map((c) => c.name)).to.include.members(['none', 'rle', 'deflate']);
    // a workspace plugin is linked into node_modules too: it must be found once, not refused as a duplicate
    expect(host.discovery.refused).to.deep.equal([]);
  });

  it('refuses a wrong API version and a duplicate name with coded errors naming package and range', function () {
    const dir = path.join(t.dir, 'refusals');
    fakePlugin(dir, 'a-too-new', { apiVersion: '2.0', entry: './index.js', provides: { transport: ['x'] } });
    fakePlugin(dir, 'b-first', { apiVersion: '1.0', entry: './index.js', provides: { transport: ['twin'] } });
    fakePlugin(dir, 'c-second', { apiVersion: '1.0', entry: './index.js', provides: { transport: ['twin'] } });
    fakePlugin(dir, 'd-bad-kind', { apiVersion: '1.0', entry: './index.js', provides: { teleporter: ['x'] } });
    const r = discoverPlugins({ installRoot: path.join(t.dir, 'nowhere'), envPath: dir });
    expect(r.plugins.map((p) => p.packageName)).to.deep.equal(['b-first']);
    const byName = Object.fromEntries(r.refused.map((x) => [x.packageName, x.error]));
    expect(byName['a-too-new'].code).to.equal('PLUGIN_API_INCOMPATIBLE');
    expect(byName['a-too-new'].message).to.include('a-too-new').and.include(supportedApiRange());
    expect(byName['c-second'].code).to.equal('PLUGIN_DUPLICATE');
    expect(byName['c-second'].message).to.include('b-first');
    expect(byName['d-bad-kind'].code).to.equal('PLUGIN_MANIFEST_INVALID');
  });

  it('in node_modules: finds a plugin whose "ferry" key is written with escapes, and skips other packages, broken ones too', function () {
    const root = path.join(t.dir, 'escaped-install');
    const nm = path.join(root, 'node_modules');
    const pkg = fakePlugin(nm, 'escaped', { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['escaped-filter'] } });
    writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ name: 'escaped', version: '1.0.0', type: 'module', ferry: { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['escaped-filter'] } } }).replace('"ferry"', '"\\u0066erry"'));
    mkdirSync(path.join(nm, 'not-json'));
    writeFileSync(path.join(nm, 'not-json', 'package.json'), '{ "name": "not-json", ');
    mkdirSync(path.join(nm, 'plain'));
    writeFileSync(path.join(nm, 'plain', 'package.json'), JSON.stringify({ name: 'plain', version: '1.0.0' }));
    const r = discoverPlugins({ installRoot: root });
    expect(r.plugins.map((p) => p.packageName)).to.deep.equal(['escaped']);
    expect(r.refused).to.deep.equal([]);
  });

  it('refuses a plugin that registers something it did not declare', async function () {
    const dir = path.join(t.dir, 'liar');
    fakePlugin(
      dir,
      'liar',
      { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['honest'] } },
      "export function register(r) { r.register('block-filter', 'sneaky', { useValue: {} }); }",
    );
    const host = await createPluginHost({ pluginPath: dir });
    try {
      await host.registration('block-filter', 'honest');
      expect.fail('expected PLUGIN_CONTRACT');
    } catch (err) {
      expect((err as FerryError).code).to.equal('PLUGIN_CONTRACT');
      expect((err as FerryError).message).to.include('liar').and.include('sneaky');
    }
  });

  it('stamps errors thrown by a plugin at load with the plugin and hook', async function () {
    const dir = path.join(t.dir, 'thrower');
    fakePlugin(dir, 'thrower', { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['boom'] } }, "export function register() { throw new Error('kaput'); }");
    const host = await createPluginHost({ pluginPath: dir });
    const err = await host.registration('block-filter', 'boom').catch((e: FerryError) => e);
    expect((err as FerryError).code).to.equal('PLUGIN_LOAD_FAILED'); // docs/errors.md: "or its register hook threw"
    expect((err as FerryError).where).to.include({ plugin: 'thrower', hook: 'register' });
  });

  it('`ferry plugins --json` lists plugins from FERRY_PLUGIN_PATH and the refused ones with reasons', async function () {
    const dir = path.join(t.dir, 'cli');
    fakePlugin(dir, 'old-plugin', { apiVersion: '0.9', entry: './index.js', provides: { transport: ['old'] } });
    const r = await runFerry(['plugins', '--json'], { env: { FERRY_PLUGIN_PATH: `${EXAMPLES}:${dir}` } });
    expect(r.code, r.stderr).to.equal(0);
    const out = json<{ plugins: { name: string; source: string; provides: { kind: string; name: string }[] }[]; refused: { name: string; error: { code: string } }[] }>(r);
    const example = out.plugins.find((p) => p.name === 'ferry-example-filter');
    expect(example?.source).to.equal('env');
    expect(example?.provides).to.deep.equal([{ kind: 'block-filter', name: 'scratch-marker' }]);
    expect(out.refused.map((x) => [x.name, x.error.code])).to.deep.include(['old-plugin', 'PLUGIN_API_INCOMPATIBLE']);
  });

  it("a third-party block filter from the job's plugins: folder runs in the data pipe", async function () {
    const images = path.join(t.dir, 'images');
    mkdirSync(images, { recursive: true });
    const image = path.join(images, 'vm.raw');
    await makeVmImage(image, { sizeBytes: 8 * 1024 * 1024, seed: 11, holes: 0 });
    // mark two 256 KiB blocks as scratch
    const { openSync, writeSync, closeSync } = await import('node:fs');
    const fd = openSync(image, 'r+');
    for (const block of [3, 9]) writeSync(fd, Buffer.from('FERRY-SCRATCH'), 0, 13, block * 256 * 1024);
    closeSync(fd);
    const job = writeJob(t.dir, basicJob({ disks: ['vm.raw'], extra: `filters: [zero, scratch-marker]\nplugins: [${EXAMPLES}]` }), 'filter-job.yaml');
    const rt = await JobRuntime.open(job);
    try {
      const report = await runBackup(rt);
      expect(report.status, JSON.stringify(report.vms)).to.equal('success');
      expect(report.disks[0].blocks.zero).to.be.at.least(2);
      const out = path.join(t.dir, 'vm.restored');
      await restoreDisk(rt, { vm: 'web01', disk: 'vm.raw', point: 'latest', to: out });
      const diff = await firstDifference(image, out);
      expect(Math.floor(diff / (256 * 1024))).to.equal(3); // the first scratch block came back as zeros
    } finally {
      await rt.close();
    }
  });

  describe('a name written into the repository format is never shadowed', function () {
    const shadowEntry =
      "export function register(r) { r.register('compressor', 'zstd', { useValue: { compress: (d) => Buffer.from(d).reverse(), decompress: (d) => Buffer.from(d).reverse() } }); }";

    function shadowJob(name: string, compression: string): string {
      const dir = path.join(t.dir, name);
      mkdirSync(path.join(dir, 'images'), { recursive: true });
      writeFileSync(path.join(dir, 'images', 'vm.raw'), Buffer.alloc(256 * 1024, 1));
      fakePlugin(path.join(dir, 'plugins'), 'my-zstd', { apiVersion: '1.0', entry: './index.js', provides: { compressor: ['zstd'] } }, shadowEntry);
      return writeJob(dir, basicJob({ disks: ['vm.raw'], compression, extra: 'plugins: [./plugins]' }));
    }

    it("refuses a job's plugins: compressor named like an installed one as PLUGIN_DUPLICATE (exit 2)", async function () {
      const job = shadowJob('shadow-zstd', 'high');
      const v = await runFerry(['validate', job, '--json']);
      expect(v.code, v.stdout + v.stderr).to.equal(2);
      const err = json<{ error: { code: string; message: string; where: { plugin: string; file: string; path: string } } }>(v).error;
      expect(err.code).to.equal('PLUGIN_DUPLICATE');
      expect(err.message).to.include('@ferry/compress-zstd').and.include(path.join(t.dir, 'shadow-zstd', 'plugins', 'my-zstd'));
      // where the job selects it, and the refused package
      expect(err.where).to.include({ plugin: 'my-zstd', file: job, path: 'storage.compression' });

      const b = await runFerry(['backup', job, '--json']);
      expect(b.code, b.stdout + b.stderr).to.equal(2);
      expect(json<{ error: { code: string } }>(b).error.code).to.equal('PLUGIN_DUPLICATE');

      const p = await runFerry(['plugins', '--job', job, '--json']);
      expect(p.code, p.stderr).to.equal(0);
      const out = json<{ plugins: { name: string }[]; refused: { name: string; source: string; error: { code: string } }[] }>(p);
      expect(out.plugins.map((x) => x.name)).to.include('@ferry/compress-zstd').and.not.include('my-zstd');
      expect(out.refused.map((x) => [x.name, x.source, x.error.code])).to.deep.include(['my-zstd', 'job', 'PLUGIN_DUPLICATE']);
    });

    it('refuses a shadowing compressor from FERRY_PLUGIN_PATH, and one named like a built-in', async function () {
      const dir = path.join(t.dir, 'shadow-env');
      fakePlugin(dir, 'env-zstd', { apiVersion: '1.0', entry: './index.js', provides: { compressor: ['zstd'] } }, shadowEntry);
      fakePlugin(dir, 'env-deflate', { apiVersion: '1.0', entry: './index.js', provides: { compressor: ['deflate'] } });
      const host = await createPluginHost({ pluginPath: dir });
      expect(host.discovery.plugins.map((p) => p.packageName)).to.include('@ferry/compress-zstd').and.not.include('env-zstd');
      const byName = Object.fromEntries(host.discovery.refused.map((x) => [x.packageName, x.error]));
      expect(byName['env-zstd']?.code).to.equal('PLUGIN_DUPLICATE');
      expect(byName['env-deflate']?.code).to.equal('PLUGIN_DUPLICATE');
      expect(byName['env-deflate'].message).to.include('built into the core');
      const err = await host.registration('compressor', 'zstd').catch((e: FerryError) => e);
      expect((err as FerryError).code).to.equal('PLUGIN_DUPLICATE');
    });
  });

  describe("a block filter's broken hook fails its disk with a coded error", function () {
    interface DiskError {
      code: string;
      message: string;
      where: Record<string, unknown>;
    }

    async function backupWith(filter: string): Promise<{ code: number | null; error: DiskError; text: string; stderr: string }> {
      const dir = path.join(t.dir, `faulty-${filter}`);
      mkdirSync(path.join(dir, 'images'), { recursive: true });
      writeFileSync(path.join(dir, 'images', 'vm.raw'), Buffer.alloc(1024 * 1024, 7));
      const extra = `filters: [zero, ${filter}]\nplugins: [${path.join(EXAMPLES, 'faulty-filter')}]`;
      const job = writeJob(dir, basicJob({ disks: ['vm.raw'], extra }));
      const r = await runFerry(['backup', job, '--json']);
      const report = json<{ status: string; disks: { error?: DiskError }[] }>(r);
      expect(report.status, r.stdout).to.equal('failed');
      const human = await runFerry(['backup', job]);
      expect(human.code).to.equal(r.code);
      return { code: r.code, error: report.disks[0].error!, text: human.stdout, stderr: r.stderr + human.stderr };
    }

    const expectNamed = (e: DiskError, hook: string): void => {
      expect(e.where).to.include({ plugin: 'ferry-test-faulty-filter', hook, vm: 'web01', disk: 'vm.raw', offset: 512 * 1024 });
      expect(e.message).to.include('plugin ferry-test-faulty-filter (classify)').and.include('disk vm.raw').and.include('offset 524288');
    };

    it('a classify that throws is PLUGIN_FAILED naming plugin, hook, disk and offset, without a stack', async function () {
      const r = await backupWith('classify-throws');
      expect(r.code).to.equal(1);
      expect(r.error.code).to.equal('PLUGIN_FAILED');
      expect(r.error.message).to.include('reading "marker"');
      expectNamed(r.error, 'classify');
      expect(r.text).to.include('PLUGIN_FAILED');
      for (const out of [r.error.message, r.text, r.stderr]) expect(out).not.to.match(/\n\s+at /);
    });

    it("a verdict other than 'keep' or 'zero' is refused as PLUGIN_CONTRACT naming the verdict", async function () {
      const r = await backupWith('bad-verdict');
      expect(r.code).to.equal(1);
      expect(r.error.code).to.equal('PLUGIN_CONTRACT');
      expect(r.error.message).to.include('"drop"');
      expectNamed(r.error, 'classify');
      for (const out of [r.text, r.stderr]) expect(out).not.to.match(/\n\s+at /);
    });
  });

  describe('what a plugin author gets when a package is wrong', function () {
    interface Refused {
      name: string;
      dir: string;
      error: { code: string; message: string; where: { file?: string; line?: number; path?: string; plugin?: string } };
    }

    async function listed(dir: string): Promise<Refused[]> {
      const r = await runFerry(['plugins', '--json'], { env: { FERRY_PLUGIN_PATH: dir } });
      expect(r.code, r.stderr).to.equal(0);
      const refused = json<{ refused: Refused[] }>(r).refused;
      // every refusal says where, as other JSON errors do
      for (const x of refused) expect(x.error.where.file, JSON.stringify(x)).to.be.a('string');
      return refused;
    }

    it('a register that throws is PLUGIN_LOAD_FAILED (exit 2) naming plugin and hook', async function () {
      const dir = path.join(t.dir, 'register-throws');
      mkdirSync(path.join(dir, 'images'), { recursive: true });
      writeFileSync(path.join(dir, 'images', 'vm.raw'), Buffer.alloc(256 * 1024));
      fakePlugin(path.join(dir, 'plugins'), 'throws-at-register', { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['boom'] } }, "export function register() { throw new Error('kaput'); }");
      const job = writeJob(dir, basicJob({ disks: ['vm.raw'], extra: 'filters: [zero, boom]\nplugins: [./plugins]' }));
      const r = await runFerry(['validate', job, '--json']);
      expect(r.code, r.stdout + r.stderr).to.equal(2);
      const err = json<{ error: { code: string; message: string; where: Record<string, unknown> } }>(r).error;
      expect(err.code).to.equal('PLUGIN_LOAD_FAILED');
      expect(err.message).to.include('kaput');
      expect(err.where).to.include({ plugin: 'throws-at-register', hook: 'register' });
    });

    it('a package.json that is not JSON is refused as PLUGIN_MANIFEST_INVALID naming the file and line', async function () {
      const dir = path.join(t.dir, 'broken-json');
      const pkg = fakePlugin(dir, 'broken-json', { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['x'] } });
      writeFileSync(path.join(pkg, 'package.json'), '{\n  "name": "broken-json",\n  "ferry": { "apiVersion": "1.0", },\n}\n');
      const alone = path.join(t.dir, 'broken-alone');
      mkdirSync(alone);
      writeFileSync(path.join(alone, 'package.json'), '{ "name": "broken-alone" ');
      for (const [where, file] of [
        [dir, path.join(pkg, 'package.json')],
        [alone, path.join(alone, 'package.json')], // a plugins: entry that is itself the package
      ]) {
        const refused = await listed(where);
        const x = refused.find((r) => r.error.where.file === file);
        expect(x?.error.code, JSON.stringify(refused)).to.equal('PLUGIN_MANIFEST_INVALID');
        expect(x?.error.message).to.include('not valid JSON').and.include(file);
      }
      expect((await listed(dir)).find((r) => r.dir === pkg)?.error.where.line).to.equal(3);
    });

    it('`ferry plugins` refuses a package whose ferry.entry does not exist, naming the file', async function () {
      const dir = path.join(t.dir, 'no-entry');
      const pkg = fakePlugin(dir, 'no-entry', { apiVersion: '1.0', entry: './dist/index.js', provides: { 'block-filter': ['x'] } });
      const refused = await listed(dir);
      const x = refused.find((r) => r.name === 'no-entry');
      expect(x?.error.code).to.equal('PLUGIN_MANIFEST_INVALID');
      expect(x?.error.message).to.include(path.join(pkg, 'dist', 'index.js'));
      expect(x?.error.where).to.include({ plugin: 'no-entry', file: path.join(pkg, 'package.json'), path: 'ferry.entry' });
    });

    it('PLUGIN_CONTRACT says what the package declares and what it registered', async function () {
      const dir = path.join(t.dir, 'half');
      fakePlugin(
        dir,
        'half',
        { apiVersion: '1.0', entry: './index.js', provides: { 'block-filter': ['one', 'two'] } },
        "export function register(r) { r.register('block-filter', 'one', { useValue: {} }); }",
      );
      const host = await createPluginHost({ pluginPath: dir });
      const err = (await host.registration('block-filter', 'one').catch((e: FerryError) => e)) as FerryError;
      expect(err.code).to.equal('PLUGIN_CONTRACT');
      expect(err.message).to.include('declares block-filter "one", block-filter "two"').and.include('registered block-filter "one"');
      expect(err.where).to.include({ plugin: 'half', hook: 'register' });
    });
  });
});
