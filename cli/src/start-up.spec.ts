import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { compileCacheDir, enableCompileCache } from './compile-cache.js';
import { VERBS } from './commands/verbs.js';
import { plainRestore } from './main.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BIN = path.join(ROOT, 'bin', 'ferry.js');

/** Runs `ferry ARGS` and returns what it printed and every module URL it loaded (ESM loader hooks). */
function runLogged(args: string[], dir: string): Promise<{ stdout: string; stderr: string; code: number; modules: string[] }> {
  const log = path.join(dir, `modules-${Math.random().toString(36).slice(2)}.txt`);
  const hooks = path.join(dir, 'hooks.mjs');
  const register = path.join(dir, 'register.mjs');
  if (!existsSync(register)) {
    writeFileSync(hooks, `import { appendFileSync } from 'node:fs';\nexport async function load(url, ctx, next) { if (process.env.FERRY_TEST_MODULE_LOG) appendFileSync(process.env.FERRY_TEST_MODULE_LOG, url + '\\n'); return next(url, ctx); }\n`);
    writeFileSync(register, `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(hooks).href)});\n`);
  }
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--import', pathToFileURL(register).href, BIN, ...args], { env: { ...process.env, FERRY_TEST_MODULE_LOG: log } }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number') return reject(err);
      const modules = existsSync(log) ? readFileSync(log, 'utf8').split('\n').filter(Boolean) : [];
      resolve({ stdout, stderr, code: err ? (err.code as number) : 0, modules });
    });
  });
}

describe('CLI start-up: only what the command needs is loaded', function () {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-startup-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('`ferry --version` prints the version without loading yargs or @ferry/core', async function () {
    const r = await runLogged(['--version'], dir);
    const { version } = JSON.parse(readFileSync(path.join(ROOT, 'cli', 'package.json'), 'utf8')) as { version: string };
    expect(r.code).to.equal(0);
    expect(r.stdout).to.equal(`${version}\n`);
    expect(r.modules.some((m) => m.includes('/cli/dist/bin.js')), 'the hook saw the CLI load').to.equal(true);
    expect(r.modules.filter((m) => m.includes('/node_modules/yargs/') || m.includes('/core/dist/'))).to.deep.equal([]);
  });

  it('`ferry --help` lists every verb without loading a command module or the core index', async function () {
    const r = await runLogged(['--help'], dir);
    expect(r.code).to.equal(0);
    for (const v of Object.values(VERBS)) expect(r.stdout).to.include(`ferry ${v.command}`);
    expect(r.modules.filter((m) => m.includes('/cli/dist/commands/') && !m.endsWith('/verbs.js'))).to.deep.equal([]);
    expect(r.modules.filter((m) => m.endsWith('/core/dist/index.js'))).to.deep.equal([]);
  });

  it('`ferry VERB` loads that verb’s module and no other', async function () {
    const r = await runLogged(['plugins', '--help'], dir);
    expect(r.code).to.equal(0);
    expect(r.stdout).to.include('ferry plugins');
    const commands = r.modules.filter((m) => m.includes('/cli/dist/commands/')).map((m) => path.basename(m));
    expect(commands).to.include('plugins.js');
    expect(commands.filter((c) => c !== 'plugins.js' && c !== 'verbs.js')).to.deep.equal([]);
  });
});

describe('CLI start-up: `ferry backup JOB [--json]` without yargs', function () {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-startup-backup-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const yargsLoaded = (modules: string[]) => modules.some((m) => m.includes('/node_modules/yargs/'));

  it('backs up as through yargs, and a form it does not take goes through yargs', async function () {
    this.timeout(60_000);
    const ds = path.join(dir, 'ds');
    mkdirSync(ds);
    writeFileSync(path.join(ds, 'd.raw'), Buffer.alloc(64 * 1024, 7));
    const job = path.join(dir, 'job.yaml');
    const repo = JSON.stringify(path.join(dir, 'repo'));
    writeFileSync(job, `job: startup\nsource: { host: file, datastore: ${JSON.stringify(ds)}, vms: [ { name: vm, disks: [d.raw] } ] }\nrepository: { type: filesystem, path: ${repo} }\n`);
    const plain = await runLogged(['backup', job, '--json'], dir);
    expect(plain.code).to.equal(0);
    expect((JSON.parse(plain.stdout) as { status: string }).status).to.equal('success');
    expect(yargsLoaded(plain.modules), 'yargs loaded for the plain form').to.equal(false);
    const viaYargs = await runLogged(['backup', '--json=true', job], dir);
    expect(viaYargs.code).to.equal(0);
    expect((JSON.parse(viaYargs.stdout) as { status: string }).status).to.equal('success');
    expect(yargsLoaded(viaYargs.modules), 'yargs loaded for --json=true').to.equal(true);
  });

  it('reports a missing job file exactly as the yargs path does', async function () {
    const missing = path.join(dir, 'missing.yaml');
    const plain = await runLogged(['backup', missing], dir);
    const viaYargs = await runLogged(['backup', '--json=false', missing], dir);
    expect(yargsLoaded(plain.modules)).to.equal(false);
    expect(yargsLoaded(viaYargs.modules)).to.equal(true);
    expect(plain.code).to.equal(2);
    expect(plain.stderr).to.include('JOB_FILE_NOT_FOUND');
    expect({ code: plain.code, stdout: plain.stdout, stderr: plain.stderr }).to.deep.equal({ code: viaYargs.code, stdout: viaYargs.stdout, stderr: viaYargs.stderr });
  });
});

describe('CLI start-up: `ferry restore JOB --vm VM --disk DISK --to FILE` without yargs', function () {
  let dir: string;
  before(() => (dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-startup-restore-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const loaded = (modules: string[], part: string) => modules.some((m) => m.includes(part));

  it('parses only the plain forms; every other form is left to yargs', function () {
    const base = { job: 'j.yaml', vm: 'v', disk: 'd.raw', to: 'out.raw', point: 'latest', force: false, json: false };
    expect(plainRestore(['restore', 'j.yaml', '--vm', 'v', '--disk', 'd.raw', '--to', 'out.raw'])).to.deep.equal(base);
    expect(plainRestore(['restore', '--json', '--to', 'out.raw', '--point', 'P1', '--disk', 'd.raw', '--force', '--vm', 'v', 'j.yaml'])).to.deep.equal({
      ...base,
      point: 'P1',
      force: true,
      json: true,
    });
    for (const argv of [
      ['restore', 'j.yaml', '--vm', 'v', '--to', 'o'], // no --disk (yargs says what is missing)
      ['restore', 'j.yaml', '--vm', 'v', '--define', 'n', '--to', 'o'],
      ['restore', 'j.yaml', '--vm=v', '--disk', 'd', '--to', 'o'],
      ['restore', 'j.yaml', '--vm', 'v', '--vm', 'w', '--disk', 'd', '--to', 'o'],
      ['restore', 'j.yaml', '--vm', 'v', '--disk', 'd', '--to', '-o'],
      ['restore', 'j.yaml', '--vm', 'v', '--disk', 'd', '--to', 'o', '--json', '--json'],
      ['restore', 'j.yaml', 'k.yaml', '--vm', 'v', '--disk', 'd', '--to', 'o'],
      ['restore', 'j.yaml', '--vm', 'v', '--disk', 'd', '--to', 'o', '-h'],
      ['restore', 'help'],
      ['backup', 'j.yaml'],
    ]) {
      expect(plainRestore(argv), argv.join(' ')).to.equal(undefined);
    }
  });

  it('restores as through yargs, loading neither yargs nor the core index', async function () {
    this.timeout(60_000);
    const ds = path.join(dir, 'ds');
    mkdirSync(ds);
    const disk = Buffer.alloc(256 * 1024);
    disk.fill(9, 4096, 100_000);
    writeFileSync(path.join(ds, 'd.raw'), disk);
    const job = path.join(dir, 'job.yaml');
    writeFileSync(job, `job: startup\nsource: { host: file, datastore: ${JSON.stringify(ds)}, vms: [ { name: vm, disks: [d.raw] } ] }\nrepository: { type: filesystem, path: ${JSON.stringify(path.join(dir, 'repo'))} }\n`);
    expect((await runLogged(['backup', job], dir)).code).to.equal(0);
    const plain = await runLogged(['restore', job, '--vm', 'vm', '--disk', 'd.raw', '--to', path.join(dir, 'a.raw'), '--json'], dir);
    expect(plain.code, plain.stderr).to.equal(0);
    expect(readFileSync(path.join(dir, 'a.raw')).equals(disk)).to.equal(true);
    expect(loaded(plain.modules, '/node_modules/yargs/'), 'yargs loaded for the plain form').to.equal(false);
    expect(loaded(plain.modules, '/core/dist/index.js'), 'the core index loaded').to.equal(false);
    expect(loaded(plain.modules, '/core/dist/session/remote-restore.js'), 'the remote restore loaded').to.equal(false);
    const viaYargs = await runLogged(['restore', job, '--vm=vm', '--disk', 'd.raw', '--to', path.join(dir, 'b.raw'), '--json'], dir);
    expect(viaYargs.code, viaYargs.stderr).to.equal(0);
    expect(loaded(viaYargs.modules, '/node_modules/yargs/')).to.equal(true);
    expect(readFileSync(path.join(dir, 'b.raw')).equals(disk)).to.equal(true);
    const report = (out: string) => ({ ...(JSON.parse(out) as Record<string, unknown>), to: undefined, durationMs: undefined });
    expect(report(plain.stdout)).to.deep.equal(report(viaYargs.stdout));
    // refusing an existing target: the same error, code and output both ways
    const again = await runLogged(['restore', job, '--vm', 'vm', '--disk', 'd.raw', '--to', path.join(dir, 'a.raw')], dir);
    const againYargs = await runLogged(['restore', job, '--vm=vm', '--disk', 'd.raw', '--to', path.join(dir, 'a.raw')], dir);
    expect(again.stderr).to.include('RESTORE_TARGET_EXISTS');
    expect({ code: again.code, stdout: again.stdout, stderr: again.stderr }).to.deep.equal({ code: againYargs.code, stdout: againYargs.stdout, stderr: againYargs.stderr });
  });
});

describe('V8 compile cache', function () {
  it('lives under $XDG_CACHE_HOME (absolute only), else ~/.cache', function () {
    expect(compileCacheDir({ XDG_CACHE_HOME: '/var/cache/u' })).to.equal(path.join('/var/cache/u', 'ferry', 'v8'));
    expect(compileCacheDir({ XDG_CACHE_HOME: 'relative' })).to.equal(path.join(os.homedir(), '.cache', 'ferry', 'v8'));
    expect(compileCacheDir({})).to.equal(path.join(os.homedir(), '.cache', 'ferry', 'v8'));
  });

  it('is off with NODE_DISABLE_COMPILE_CACHE, and an unwritable folder neither throws nor stops the CLI', async function () {
    expect(enableCompileCache({ NODE_DISABLE_COMPILE_CACHE: '1' })).to.equal(undefined);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ferry-cc-'));
    try {
      const file = path.join(dir, 'not-a-folder');
      writeFileSync(file, '');
      // a cache "folder" below a regular file can never be made
      const r = await new Promise<{ code: number; stdout: string }>((resolve) =>
        execFile(process.execPath, [BIN, 'plugins', '--help'], { env: { ...process.env, XDG_CACHE_HOME: file } }, (err, stdout) =>
          resolve({ code: err ? Number(err.code) : 0, stdout }),
        ),
      );
      expect(r.code).to.equal(0);
      expect(r.stdout).to.include('ferry plugins');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
