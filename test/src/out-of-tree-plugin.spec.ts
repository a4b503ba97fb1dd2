import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'chai';
import { ROOT, tempDir } from './support/helpers.js';

/**
 * A block filter written in TypeScript outside the workspace, depending on `@ferry/core` as a packed
 * tarball (docs/plugin-guide.md, "Outside the workspace"): it compiles against the packed
 * declarations alone, with `skipLibCheck` off, and its own spec loads it through the packed core's
 * plugin host and runs the block-filter conformance suite.
 */

const PLUGIN_SOURCE = `import { FerryError, type BlockFilter, type Extent, type PluginRegistrar, type SourceDisk } from '@ferry/core/plugin';

/** Drops blocks that start with its marker; never reads the disk's first ${'${reserved}'} bytes. */
export class OotFilter implements BlockFilter {
  constructor(private readonly marker: Buffer, private readonly reserved: number) {}

  async skipExtents(disk: SourceDisk): Promise<Extent[]> {
    if (disk.size === undefined) throw new FerryError('SOURCE_DISK_NOT_FOUND', 'size unknown', { disk: disk.name });
    return this.reserved > 0 ? [{ offset: 0, length: Math.min(this.reserved, disk.size) }] : [];
  }

  classify(block: Uint8Array): 'keep' | 'zero' {
    return Buffer.from(block.buffer, block.byteOffset, block.byteLength).subarray(0, this.marker.length).equals(this.marker) ? 'zero' : 'keep';
  }
}

export function register(r: PluginRegistrar): void {
  r.register('block-filter', 'oot', {
    useFactory: (c) => {
      const config = c.resolve(r.tokens.PluginConfig) as { marker: string; reserved?: number };
      return new OotFilter(Buffer.from(config.marker, 'ascii'), config.reserved ?? 0);
    },
  }, {
    configSchema: { type: 'object', required: ['marker'], properties: { marker: { type: 'string' }, reserved: { type: 'integer', minimum: 0 } } },
  });
}
`;

const SPEC_SOURCE = `import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadPluginForTest, runBlockFilterConformance } from '@ferry/core/testing';

const pkg = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const marked = Buffer.alloc(4096, 1);
marked.write('OOT!', 0, 'ascii');
runBlockFilterConformance('oot', () => loadPluginForTest(pkg, 'block-filter', 'oot', { marker: 'OOT!', reserved: 1048576 }), { drops: [marked] });
`;

function run(cmd: string, args: string[], cwd: string): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 120_000, env: { ...process.env, npm_config_update_notifier: 'false' } });
}

function output(r: SpawnSyncReturns<string>): string {
  return `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`;
}

/**
 * `npm install <tarball>`; without the registry (and its packages not in npm's cache) the same
 * layout by hand: the tarball unpacked as node_modules/@ferry/core and its dependencies linked from
 * the workspace's node_modules, which is what npm would have installed.
 */
function installCore(plugin: string, tarball: string): 'npm' | 'unpacked' {
  if (run('npm', ['install', '--offline', '--no-audit', '--no-fund', '--ignore-scripts', '--no-save', tarball], plugin).status === 0) return 'npm';
  const core = path.join(plugin, 'node_modules', '@ferry', 'core');
  mkdirSync(core, { recursive: true });
  const untar = run('tar', ['-xzf', tarball, '-C', core, '--strip-components=1'], plugin);
  expect(untar.status, output(untar)).to.equal(0);
  const manifest = JSON.parse(readFileSync(path.join(core, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  for (const dep of Object.keys(manifest.dependencies ?? {})) {
    mkdirSync(path.dirname(path.join(plugin, 'node_modules', dep)), { recursive: true });
    symlinkSync(path.join(ROOT, 'node_modules', dep), path.join(plugin, 'node_modules', dep));
  }
  return 'unpacked';
}

describe('a plugin outside the workspace, against the packed @ferry/core', function () {
  this.timeout(300_000);
  const t = tempDir('ferry-oot-');
  after(() => t.cleanup());
  const plugin = path.join(t.dir, 'ferry-oot-filter');
  let route: string;

  before(function () {
    const packed = run('npm', ['pack', '--silent', '--pack-destination', t.dir], path.join(ROOT, 'core'));
    expect(packed.status, output(packed)).to.equal(0);
    const tarball = path.join(t.dir, readdirSync(t.dir).find((f) => f.endsWith('.tgz'))!);
    mkdirSync(path.join(plugin, 'src'), { recursive: true });
    writeFileSync(path.join(plugin, 'package.json'), JSON.stringify({
      name: 'ferry-oot-filter',
      version: '1.0.0',
      type: 'module',
      ferry: { apiVersion: '1.1', entry: './dist/index.js', provides: { 'block-filter': ['oot'] } },
    }, null, 2));
    writeFileSync(path.join(plugin, 'tsconfig.json'), JSON.stringify({
      compilerOptions: {
        target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true,
        rootDir: 'src', outDir: 'dist', declaration: true, skipLibCheck: false, types: ['node', 'mocha'],
      },
      include: ['src'],
    }, null, 2));
    writeFileSync(path.join(plugin, 'src', 'index.ts'), PLUGIN_SOURCE);
    writeFileSync(path.join(plugin, 'src', 'index.spec.ts'), SPEC_SOURCE);
    route = installCore(plugin, tarball);
    // The author's own dev dependencies: type definitions for Node and mocha.
    mkdirSync(path.join(plugin, 'node_modules', '@types'), { recursive: true });
    for (const types of ['node', 'mocha']) {
      const link = path.join(plugin, 'node_modules', '@types', types);
      if (!readdirSync(path.dirname(link)).includes(types)) symlinkSync(path.join(ROOT, 'node_modules', '@types', types), link);
    }
  });

  it('type-checks against the packed declarations only (skipLibCheck off)', function () {
    const tsc = run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.'], plugin);
    expect(tsc.status, `${route}: ${output(tsc)}`).to.equal(0);
  });

  it('cannot reach an internal through @ferry/core/plugin', function () {
    writeFileSync(path.join(plugin, 'src', 'leak.ts'), "import type { JobRuntime } from '@ferry/core/plugin';\nexport type R = JobRuntime;\n");
    try {
      const tsc = run(process.execPath, [path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', '.', '--noEmit'], plugin);
      expect(tsc.status).to.not.equal(0);
      expect(output(tsc)).to.match(/TS2305.*JobRuntime/);
    } finally {
      writeFileSync(path.join(plugin, 'src', 'leak.ts'), 'export {};\n');
    }
  });

  it("its own spec loads it through the packed core's plugin host and passes the conformance suite", function () {
    const mocha = run(process.execPath, [path.join(ROOT, 'node_modules', 'mocha', 'bin', 'mocha.js'), '--no-config', '--reporter', 'dot', 'dist/index.spec.js'], plugin);
    expect(mocha.status, output(mocha)).to.equal(0);
    expect(mocha.stdout).to.match(/5 passing/);
  });
});
