import { statSync } from 'node:fs';
import path from 'node:path';
import type { Ajv } from 'ajv';

/** Whether `p` names a folder (`directory`), or a file or block device (`file`). */
export function pathExists(p: string, kind: 'directory' | 'file'): boolean {
  try {
    const st = statSync(p);
    return kind === 'directory' ? st.isDirectory() : st.isFile() || st.isBlockDevice();
  } catch {
    return false;
  }
}

/**
 * The `ferryPath` schema keyword (`docs/plugin-guide.md`): a string value is a path, made absolute
 * against `baseDir` in place; `check` gets the keyword's kind (`file`, `directory`, `create`), the
 * absolute path and the value's JSON pointer, and records what it finds (the job loader and a proxy
 * checking a read task's options report differently).
 */
export function addFerryPathKeyword(ajv: Ajv, baseDir: string, check: (kind: string, resolved: string, pointer: string) => void): void {
  ajv.addKeyword({
    keyword: 'ferryPath',
    modifying: true,
    schemaType: 'string',
    validate: (kind: string, value: unknown, _s: unknown, ctx?: { instancePath: string; parentData: unknown; parentDataProperty: string | number }) => {
      if (typeof value !== 'string' || !ctx) return true;
      const resolved = path.resolve(baseDir, value);
      (ctx.parentData as Record<string | number, unknown>)[ctx.parentDataProperty] = resolved;
      check(kind, resolved, ctx.instancePath);
      return true;
    },
  });
}
