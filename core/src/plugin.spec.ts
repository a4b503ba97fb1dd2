import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'chai';
import * as surface from './plugin.js';

const dist = path.dirname(fileURLToPath(import.meta.url));

/**
 * Every declaration file `entry` reaches through its imports (relative ones, as paths under dist/)
 * and the packages it names. What a plugin author compiles against is exactly this set.
 */
export function declarationClosure(entry: string): { files: string[]; packages: string[] } {
  const files = new Set<string>();
  const packages = new Set<string>();
  const visit = (file: string): void => {
    const rel = path.relative(dist, file).split(path.sep).join('/');
    if (files.has(rel)) return;
    files.add(rel);
    const text = readFileSync(file, 'utf8');
    for (const m of text.matchAll(/(?:from\s+|import\s*\(\s*|import\s+)['"]([^'"]+)['"]/g)) {
      const spec = m[1];
      if (spec.startsWith('.')) visit(path.resolve(path.dirname(file), spec.replace(/\.js$/, '.d.ts')));
      else packages.add(spec);
    }
  };
  visit(path.join(dist, entry));
  return { files: [...files].sort(), packages: [...packages].sort() };
}

describe('@ferry/core/plugin', function () {
  it('its declarations reach the contracts, errors, tokens and API version only', function () {
    const { files, packages } = declarationClosure('plugin.d.ts');
    const allowed = /^(plugin|api-version|errors|tokens|contracts\/[a-z-]+|job\/job-context)\.d\.ts$/;
    expect(files.filter((f) => !allowed.test(f)), 'internal declarations reached').to.deep.equal([]);
    expect(packages).to.deep.equal(['reflect-metadata', 'tsyringe']);
  });

  it('exports the values a plugin uses and no internals', function () {
    expect(Object.keys(surface).sort()).to.deep.equal(
      ['CORE_API_VERSION', 'ERROR_CODES', 'FerryError', 'PLUGIN_KINDS', 'Tokens', 'inject', 'injectable', 'isApiCompatible', 'isFerryError', 'isJobTrackingName', 'supportedApiRange', 'trackingName'],
    );
  });
});
