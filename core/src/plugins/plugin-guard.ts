import type { BlockFilter } from '../contracts/block-filter.js';
import type { Compressor } from '../contracts/compressor.js';
import type { PluginKind, PluginKindMap } from '../contracts/plugin.js';
import type { DiskHandle, Transport } from '../contracts/transport.js';
import type { GuestRuntime, GuestSession } from '../contracts/guest-runtime.js';
import { FerryError, pluginError, type ErrorLocation } from '../errors.js';
import { zeroCheckFilters } from '../util/zero.js';

/**
 * `fn` with anything it throws, or any promise it returns rejecting, stamped with the plugin and
 * hook (and the location `where` derives from the call's arguments): a plain `Error` becomes
 * `PLUGIN_FAILED`, a `FerryError` keeps its code and gains the facts it lacked.
 */
export function guardHook<A extends unknown[], R>(
  fn: (...args: A) => R,
  plugin: string,
  hook: string,
  where: (...args: A) => ErrorLocation = () => ({}),
): (...args: A) => R {
  return (...args: A): R => {
    let out: R;
    try {
      out = fn(...args);
    } catch (err) {
      throw pluginError(err, plugin, hook, where(...args));
    }
    if (out instanceof Promise) return out.catch((err: unknown) => Promise.reject(pluginError(err, plugin, hook, where(...args)))) as R;
    return out;
  };
}

/**
 * An instance the plugin host built, with its hooks guarded by `guardHook`. Kinds whose hooks the
 * session calls with the context at hand (source hosts, repositories, what a transport throws) are
 * guarded there.
 */
export function guardPlugin<K extends PluginKind>(kind: K, impl: PluginKindMap[K], plugin: string): PluginKindMap[K] {
  if (kind === 'block-filter') return guardFilter(impl as BlockFilter, plugin) as PluginKindMap[K];
  if (kind === 'compressor') return guardCompressor(impl as Compressor, plugin) as PluginKindMap[K];
  if (kind === 'transport') return guardTransport(impl as Transport, plugin) as PluginKindMap[K];
  if (kind === 'guest-runtime') return guardGuestRuntime(impl as GuestRuntime, plugin) as PluginKindMap[K];
  return impl;
}

/**
 * The members each kind must have, as `core/src/contracts/` states them (`name()` a method, `name`
 * a value); everything else in a contract is optional with a written default. A block filter needs
 * one of its two hooks: `BLOCK_FILTER_HOOKS`.
 */
export const REQUIRED_MEMBERS: { readonly [K in PluginKind]: readonly string[] } = {
  'source-host': ['label', 'inventory()'],
  transport: ['open()'],
  'block-filter': [],
  compressor: ['compress()', 'decompress()'],
  'repository-backend': ['location', 'get()', 'put()', 'putIfAbsent()', 'has()', 'list()', 'delete()'],
  'guest-runtime': ['connect()'],
};
const BLOCK_FILTER_HOOKS = ['skipExtents()', 'classify()'];
/** What a guest runtime's `connect` must return (`core/src/contracts/guest-runtime.ts`). */
export const GUEST_SESSION_MEMBERS = ['label', 'freeze()', 'thaw()', 'close()'];
/** What a transport's `open` must return. */
export const DISK_HANDLE_MEMBERS = ['size', 'read()', 'close()'];

/**
 * Refuses an instance without a member its kind requires (as nbdkit refuses a plugin without
 * `.open`), with `PLUGIN_CONTRACT` naming the plugin, kind, name and every missing member, before
 * a session calls it and fails somewhere less clear.
 */
export function requireMembers(kind: PluginKind, name: string, impl: unknown, plugin: string, where: ErrorLocation = {}): void {
  const at = { ...where, plugin, hook: `create ${kind} ${name}` };
  if (impl === null || typeof impl !== 'object') {
    throw new FerryError('PLUGIN_CONTRACT', `${plugin} built ${describe(impl)} for ${kind} "${name}", not an object`, at);
  }
  const missing = missingMembers(impl, REQUIRED_MEMBERS[kind]);
  if (kind === 'block-filter' && missingMembers(impl, BLOCK_FILTER_HOOKS).length === BLOCK_FILTER_HOOKS.length) {
    missing.push(BLOCK_FILTER_HOOKS.join(' or '));
  }
  if (!missing.length) return;
  const required = kind === 'block-filter' ? BLOCK_FILTER_HOOKS.join(' or ') : REQUIRED_MEMBERS[kind].join(', ');
  throw new FerryError(
    'PLUGIN_CONTRACT',
    `${plugin}'s ${kind} "${name}" has no ${missing.join(', ')}; a ${kind} must have ${required} (core/src/contracts/)`,
    at,
  );
}

function missingMembers(obj: object, members: readonly string[]): string[] {
  return members.filter((m) => {
    const key = m.replace(/\(\)$/, '');
    const v = (obj as Record<string, unknown>)[key];
    return m.endsWith('()') ? typeof v !== 'function' : v === undefined || v === null;
  });
}

/**
 * A transport whose `open` checks the handle it returns for `size`, `read` and `close`. Its other
 * errors pass unchanged: the session stamps them with plugin, hook, VM and disk.
 */
export function guardTransport(impl: Transport, plugin: string): Transport {
  const out: Transport = {
    open: async (disk) => {
      const handle: unknown = await impl.open(disk);
      const missing = handle !== null && typeof handle === 'object' ? missingMembers(handle, DISK_HANDLE_MEMBERS) : DISK_HANDLE_MEMBERS;
      if (missing.length) {
        await (handle as Partial<DiskHandle> | undefined)?.close?.().catch(() => undefined);
        throw new FerryError(
          'PLUGIN_CONTRACT',
          `open returned a disk handle without ${missing.join(', ')}; a disk handle must have ${DISK_HANDLE_MEMBERS.join(', ')}`,
          { plugin, hook: 'open', disk: disk.name },
        );
      }
      return handle as DiskHandle;
    },
  };
  if (impl.probe) out.probe = impl.probe.bind(impl);
  if (impl.openTarget) out.openTarget = impl.openTarget.bind(impl);
  return out;
}

/**
 * A guest runtime whose `connect` checks the session it returns for `label`, `freeze`, `thaw` and
 * `close` (closing an incomplete one) before the session loop relies on thawing through it.
 */
export function guardGuestRuntime(impl: GuestRuntime, plugin: string): GuestRuntime {
  return {
    connect: async (vm, options, signal) => {
      const session: unknown = await impl.connect(vm, options, signal);
      const missing = session !== null && typeof session === 'object' ? missingMembers(session, GUEST_SESSION_MEMBERS) : GUEST_SESSION_MEMBERS;
      if (missing.length) {
        await (session as Partial<GuestSession> | undefined)?.close?.().catch(() => undefined);
        throw new FerryError(
          'PLUGIN_CONTRACT',
          `connect returned a guest session without ${missing.join(', ')}; a guest session must have ${GUEST_SESSION_MEMBERS.join(', ')}`,
          { plugin, hook: 'connect', vm },
        );
      }
      return session as GuestSession;
    },
  };
}

/**
 * A filter whose `skipExtents` and `classify` errors name the plugin and hook (and the block's
 * offset; the session adds VM and disk), and whose `classify` verdicts are checked: anything but
 * `keep` or `zero` fails the disk with `PLUGIN_CONTRACT` instead of being taken as keep.
 */
export function guardFilter(impl: BlockFilter, plugin: string): BlockFilter {
  const out: BlockFilter = {};
  if (impl.skipExtents) out.skipExtents = guardHook(impl.skipExtents.bind(impl), plugin, 'skipExtents');
  if (impl.classify) {
    const classify = guardHook(impl.classify.bind(impl), plugin, 'classify', (_block, offset) => ({ offset }));
    out.classify = (block, offset) => {
      const verdict: unknown = classify(block, offset);
      if (verdict === 'keep' || verdict === 'zero') return verdict;
      throw new FerryError(
        'PLUGIN_CONTRACT',
        `classify returned ${describe(verdict)}; a block filter's verdict is 'keep' or 'zero'`,
        { plugin, hook: 'classify', offset },
      );
    };
    if (zeroCheckFilters.has(impl)) zeroCheckFilters.add(out);
  }
  return out;
}

/**
 * A compressor whose `compress` errors name the plugin and hook, so a compressor that fails on one
 * block fails that block's disk with `PLUGIN_FAILED` (the source mover adds the block), not with an
 * anonymous error from a worker thread. A `decompress` that throws means a damaged block: the block
 * decoder reports that itself, so it is passed through.
 */
export function guardCompressor(impl: Compressor, plugin: string): Compressor {
  return {
    compress: guardHook(impl.compress.bind(impl), plugin, 'compress'),
    compressInto: impl.compressInto && guardHook(impl.compressInto.bind(impl), plugin, 'compressInto'),
    decompress: impl.decompress.bind(impl),
    decompressInto: impl.decompressInto?.bind(impl),
  };
}

function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === undefined || v === null || typeof v !== 'object') return String(v);
  return `a ${v.constructor?.name ?? 'object'}`;
}
