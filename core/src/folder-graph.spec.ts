import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';

/**
 * No import circles between core folders. A folder is a top-level folder of `core/src` (`session`,
 * `pipe`, ...), except under `remote/`, where `remote/services` and `remote/wire` are folders of their
 * own; a file directly in `core/src` (`errors.ts`, `index.ts`) is a node by itself. Type-only imports
 * count: a folder that needs another's types cannot be understood without it. Specs are left out.
 * A circle is fixed by moving the shared type or function below both sides, never by listing it here.
 */
const SRC = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src');

type Graph = Map<string, Map<string, string[]>>;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') && !/\.(slow-)?spec\.ts$/.test(e.name) ? [p] : [];
  });
}

export function folderOf(rel: string): string {
  const parts = rel.split('/');
  if (parts.length === 1) return parts[0]!;
  if (parts[0] === 'remote' && parts.length > 2) return `${parts[0]}/${parts[1]}`;
  return parts[0]!;
}

/** Relative specifiers of `import ... from`, `export ... from`, `import '...'` and `import('...')`. */
export function importsOf(source: string): string[] {
  return [...source.matchAll(/(?:\bfrom\s*|\bimport\s*\(?\s*)['"](\.{1,2}\/[^'"]+)['"]/g)].map((m) => m[1]!);
}

function folderGraph(root: string): Graph {
  const graph: Graph = new Map();
  for (const file of sourceFiles(root)) {
    const from = path.relative(root, file).split(path.sep).join('/');
    for (const spec of importsOf(readFileSync(file, 'utf8'))) {
      const to = path.relative(root, path.resolve(path.dirname(file), spec)).split(path.sep).join('/').replace(/\.js$/, '.ts');
      const a = folderOf(from);
      const b = folderOf(to);
      if (a === b) continue;
      const out = graph.get(a) ?? new Map<string, string[]>();
      graph.set(a, out);
      out.set(b, [...(out.get(b) ?? []), `${from} imports ${to}`]);
    }
  }
  return graph;
}

/** One circle of the graph as its folders, first repeated at the end (depth-first search), or undefined. */
export function findCircle(edges: Map<string, Iterable<string>>): string[] | undefined {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (n: string): string[] | undefined => {
    state.set(n, 'open');
    stack.push(n);
    for (const m of edges.get(n) ?? []) {
      if (state.get(m) === 'open') return [...stack.slice(stack.indexOf(m)), m];
      if (!state.has(m)) {
        const found = visit(m);
        if (found) return found;
      }
    }
    stack.pop();
    state.set(n, 'done');
    return undefined;
  };
  for (const n of [...edges.keys()].sort()) {
    if (!state.has(n)) {
      const found = visit(n);
      if (found) return found;
    }
  }
  return undefined;
}

describe('core folders', function () {
  it('import each other without circles', function () {
    const graph = folderGraph(SRC);
    expect(graph.size, 'folders found under core/src').to.be.greaterThan(5);
    const circle = findCircle(new Map([...graph].map(([a, out]) => [a, [...out.keys()].sort()])));
    const why = circle?.slice(1).map((b, i) => `  ${graph.get(circle[i]!)!.get(b)![0]}`) ?? [];
    expect(circle, `import circle ${circle?.join(' -> ')}:\n${why.join('\n')}`).to.equal(undefined);
  });

  it('the check finds a circle and names its folders', function () {
    const edges = new Map([
      ['pipe', ['repository']],
      ['repository', ['util']],
      ['session', ['pipe', 'remote/services']],
      ['remote/services', ['remote/wire', 'session']],
    ]);
    expect(findCircle(edges)).to.deep.equal(['remote/services', 'session', 'remote/services']);
    expect(findCircle(new Map([['a', ['b']], ['b', ['c']]]))).to.equal(undefined);
  });

  it('folders are top-level, remote/services and remote/wire apart, root files alone', function () {
    expect(folderOf('session/backup-session.ts')).to.equal('session');
    expect(folderOf('remote/wire/testing/tcp-relay.ts')).to.equal('remote/wire');
    expect(folderOf('remote/services/protocol.ts')).to.equal('remote/services');
    expect(folderOf('errors.ts')).to.equal('errors.ts');
    expect(importsOf(`import type { A } from '../a.js';\nexport * from './b.js';\nimport './c.js';\nconst d = import('../d.js');\nimport x from 'chai';`)).to.deep.equal([
      '../a.js',
      './b.js',
      './c.js',
      '../d.js',
    ]);
  });
});
