import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import type { Alias, Document, Node } from 'yaml';
import { yamlLib } from './yaml-lib.js';
import { FerryError } from '../errors.js';
import { formatSize } from './size.js';

/**
 * Bounds on what a job file may cost to read. A job file is a few kilobytes written by hand; these
 * limits are far above that and far below what makes the loader slow: the `yaml` package resolves
 * each alias by scanning every anchor and alias before it (quadratic), and a few nested aliases
 * ("billion laughs") expand to more values than memory holds once the validator walks them.
 */
export const MAX_JOB_FILE_BYTES = 1024 * 1024;
/** Anchors (`&name`) and, separately, aliases (`*name`) in one job file. */
export const MAX_JOB_ANCHORS = 1000;
/** Values that all the aliases of a job file stand for together, each alias counted expanded. */
export const MAX_ALIAS_EXPANSION = 100_000;

type DocPath = (string | number)[];

/** Why a document's aliases are refused, and where: `offset` into the text, `docPath` of the node. */
export interface AliasProblem {
  detail: string;
  offset?: number;
  docPath: DocPath;
}

/**
 * The job file's text, read with a bound: a regular file larger than the limit is refused from its
 * size, before reading; anything else (a pipe, a device) is read up to one byte past the limit.
 */
export function readJobText(file: string): string {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch (err) {
    throw notReadable(file, err);
  }
  try {
    const st = fstatSync(fd);
    if (st.isFile() && st.size > MAX_JOB_FILE_BYTES) throw jobFileTooLarge(file, `${st.size} bytes`);
    const buf = Buffer.alloc(MAX_JOB_FILE_BYTES + 1);
    let len = 0;
    for (let n: number; len < buf.length && (n = readSync(fd, buf, len, buf.length - len, null)) > 0; ) len += n;
    if (len > MAX_JOB_FILE_BYTES) throw jobFileTooLarge(file, `more than ${MAX_JOB_FILE_BYTES} bytes`);
    return buf.toString('utf8', 0, len);
  } catch (err) {
    throw err instanceof FerryError ? err : notReadable(file, err);
  } finally {
    closeSync(fd);
  }
}

function notReadable(file: string, err: unknown): FerryError {
  return new FerryError('JOB_FILE_NOT_FOUND', `cannot read job file: ${(err as NodeJS.ErrnoException).code ?? err}`, { file });
}

/** `size`: how large the file is, in words (`2097152 bytes`). */
export function jobFileTooLarge(file: string, size: string): FerryError {
  return new FerryError(
    'JOB_INVALID',
    `the job file is ${size}; the limit for a job file is ${formatSize(MAX_JOB_FILE_BYTES)} (${MAX_JOB_FILE_BYTES} bytes)`,
    { file },
  );
}

/**
 * Checks the anchors and aliases of a parsed document before it is turned into values: every alias
 * names an anchor defined before it and outside itself, there are at most `MAX_JOB_ANCHORS` of
 * each, and together they expand to at most `MAX_ALIAS_EXPANSION` values. One walk of the
 * document, then one size per anchored node: linear in the document's size.
 */
export function checkAliases(doc: Document): AliasProblem | undefined {
  const anchors = new Map<string, Node>();
  const targets = new Map<Alias, Node>();
  let anchorCount = 0;
  let problem: AliasProblem | undefined;
  yamlLib().visit(doc, {
    Node(_key, node, ancestors) {
      if (yamlLib().isAlias(node)) {
        const target = anchors.get(node.source);
        const at = (): AliasProblem['docPath'] => docPathOf(ancestors, node);
        if (!target) {
          problem = { detail: `alias *${node.source} names no anchor &${node.source} before it`, offset: node.range?.[0], docPath: at() };
        } else if (ancestors.includes(target)) {
          problem = { detail: `alias *${node.source} is inside the value it stands for (&${node.source}), which would make it endless`, offset: node.range?.[0], docPath: at() };
        } else if (targets.size >= MAX_JOB_ANCHORS) {
          problem = { detail: `more than ${MAX_JOB_ANCHORS} YAML aliases (*name); a job file needs a few at most`, offset: node.range?.[0], docPath: at() };
        }
        if (problem) return yamlLib().visit.BREAK;
        targets.set(node, target!);
      } else if (node.anchor) {
        if (++anchorCount > MAX_JOB_ANCHORS) {
          problem = { detail: `more than ${MAX_JOB_ANCHORS} YAML anchors (&name); a job file needs a few at most`, offset: node.range?.[0], docPath: docPathOf(ancestors, node) };
          return yamlLib().visit.BREAK;
        }
        anchors.set(node.anchor, node);
      }
      return undefined;
    },
  });
  if (problem) return problem;

  // Values each node stands for, aliases expanded; saturates just past the limit.
  const sizes = new Map<unknown, number>();
  const size = (node: unknown): number => {
    if (node === null || node === undefined) return 0;
    const known = sizes.get(node);
    if (known !== undefined) return known;
    let n = 1;
    if (yamlLib().isAlias(node)) n = size(targets.get(node));
    else if (yamlLib().isPair(node)) n = size(node.key) + size(node.value);
    else if (yamlLib().isMap(node) || yamlLib().isSeq(node)) for (const item of node.items) n = Math.min(n + size(item), MAX_ALIAS_EXPANSION + 1);
    sizes.set(node, n);
    return n;
  };
  let total = 0;
  yamlLib().visit(doc, {
    Alias(_key, node, ancestors) {
      total += size(node);
      if (total <= MAX_ALIAS_EXPANSION) return undefined;
      problem = {
        detail:
          `the YAML aliases up to *${node.source} expand to more than ${MAX_ALIAS_EXPANSION} values ` +
          `(an alias bomb?); a job file needs a few small aliases at most`,
        offset: node.range?.[0],
        docPath: docPathOf(ancestors, node),
      };
      return yamlLib().visit.BREAK;
    },
  });
  return problem;
}

/**
 * The first key that repeats a key before it in the same mapping (scalar keys compared by value,
 * as the `yaml` package's `uniqueKeys` does). The package's own check compares each key with every
 * key before it: a mapping of 100,000 keys (about 1 MiB) takes minutes; this takes one pass.
 */
export function firstDuplicateKey(doc: Document): { key: string; offset?: number } | undefined {
  let found: { key: string; offset?: number } | undefined;
  yamlLib().visit(doc, {
    Map(_key, map) {
      const seen = new Set<unknown>();
      for (const pair of map.items) {
        if (!yamlLib().isScalar(pair.key)) continue;
        if (seen.has(pair.key.value)) {
          found = { key: String(pair.key.value), offset: pair.key.range?.[0] };
          return yamlLib().visit.BREAK;
        }
        seen.add(pair.key.value);
      }
      return undefined;
    },
  });
  return found;
}

/** The key path of `node` from the ancestors `visit` passes (document, maps, pairs, sequences). */
function docPathOf(ancestors: readonly unknown[], node: unknown): DocPath {
  const out: DocPath = [];
  for (let i = 0; i < ancestors.length; i++) {
    const a = ancestors[i];
    const child = i + 1 < ancestors.length ? ancestors[i + 1] : node;
    if (yamlLib().isPair(a)) out.push(yamlLib().isScalar(a.key) ? String(a.key.value) : '?');
    else if (yamlLib().isSeq(a)) out.push(a.items.indexOf(child as never));
  }
  return out;
}
