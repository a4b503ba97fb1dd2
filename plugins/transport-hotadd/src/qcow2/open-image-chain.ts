import { promises as fs } from 'node:fs';
import path from 'node:path';
import { FerryError } from '@ferry/core/plugin';
import { QCOW2_MAGIC } from '../detect-qcow2.js';
import { diskSize } from '../disk-size.js';
import type { ReadAt } from '../hotadd-disk-handle.js';
import type { SeekAddon } from '../seek-addon.js';
import { ClusterMap } from './cluster-map.js';
import { ImageFile } from './image-file.js';
import { Qcow2Layer, RawLayer, type ImageLayer } from './image-layer.js';
import { checkQcow2Features, readQcow2Header } from './qcow2-header.js';

export interface ChainOptions {
  diskName: string;
  readAt: ReadAt;
  /** For holes in a raw file at the bottom of the chain; missing: it is all data. */
  seek?: SeekAddon;
}

/** Deep enough for any chain QEMU users build by hand or by snapshots; a bound for hostile ones. */
const MAX_CHAIN = 64;

/** A backing name QEMU would hand to a protocol driver (`nbd:...`, `json:{...}`), not a file name. */
const PROTOCOL = /^[A-Za-z0-9.+_-]+:/;

/** What one open chain is made of, to be closed as a whole; `files[0]` is the top image. */
interface Chain {
  options: ChainOptions;
  files: ImageFile[];
  /** Real paths of the images opened so far, to find a chain that loops back on itself. */
  seen: string[];
}

/**
 * Opens the qcow2 image in `top` and its backing chain (qcow2 or raw, recursively), and returns the
 * top layer. Backing names are resolved against the folder of the image that names them. On failure
 * every backing file opened so far is closed again; `top` stays the caller's to close.
 */
export async function openImageChain(top: ImageFile, options: ChainOptions): Promise<{ layer: Qcow2Layer; files: ImageFile[] }> {
  const topReal = await fs.realpath(top.path).catch(() => path.resolve(top.path));
  const chain: Chain = { options, files: [top], seen: [topReal] };
  try {
    return { layer: await openQcow2Layer(top, chain), files: chain.files };
  } catch (err) {
    await Promise.all(chain.files.slice(1).map((f) => f.close().catch(() => undefined)));
    throw err;
  }
}

async function openQcow2Layer(file: ImageFile, chain: Chain): Promise<Qcow2Layer> {
  const header = await readQcow2Header(file);
  const notes = checkQcow2Features(header, file);
  const map = await ClusterMap.open(file, header, notes.extendedL2);
  const backing = header.backingFile === undefined ? undefined : await openBacking(file, header.backingFile, header.backingFormat, chain);
  return new Qcow2Layer(file, header, notes, map, backing);
}

async function openBacking(image: ImageFile, name: string, format: string | undefined, chain: Chain): Promise<ImageLayer> {
  if (PROTOCOL.test(name) && !path.isAbsolute(name)) throw image.unsupported(`a backing file reached through a protocol (${name})`);
  const file = await openBackingFile(image, path.resolve(path.dirname(image.path), name), chain);
  const isQcow2 = await hasQcow2Magic(file);
  // Images written without `-F` carry no format; like older QEMU, tell qcow2 from raw by the magic.
  const kind = format ?? (isQcow2 ? 'qcow2' : 'raw');
  if (kind === 'raw') return new RawLayer(file, chain.options.seek);
  if (kind !== 'qcow2') throw image.unsupported(`a backing file of format ${kind} (${file.path}; hot-add reads raw and qcow2)`);
  if (!isQcow2) throw file.corrupt(`it is named as a qcow2 backing file of ${image.path} but has no qcow2 magic`);
  return openQcow2Layer(file, chain);
}

async function openBackingFile(image: ImageFile, target: string, chain: Chain): Promise<ImageFile> {
  const { diskName, readAt } = chain.options;
  let real: string;
  try {
    real = await fs.realpath(target);
  } catch (err) {
    throw backingUnavailable(image, target, diskName, err);
  }
  const loop = chain.seen.indexOf(real);
  if (loop >= 0) {
    const names = [...chain.files.slice(loop).map((f) => f.path), target].join(' -> ');
    throw image.corrupt(`the backing chain loops back to ${target}: ${names}`);
  }
  if (chain.files.length >= MAX_CHAIN) throw image.unsupported(`a backing chain longer than ${MAX_CHAIN} images (at ${target})`);
  const fh = await fs.open(target, 'r').catch((err: unknown) => Promise.reject(backingUnavailable(image, target, diskName, err)));
  try {
    const file = new ImageFile(target, fh, await diskSize(fh, { name: diskName, path: target }), readAt, diskName);
    chain.files.push(file);
    chain.seen.push(real);
    return file;
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}

async function hasQcow2Magic(file: ImageFile): Promise<boolean> {
  if (file.size < QCOW2_MAGIC.length) return false;
  return (await file.read(0, QCOW2_MAGIC.length, 'the magic')).equals(QCOW2_MAGIC);
}

function backingUnavailable(image: ImageFile, target: string, diskName: string, err: unknown): FerryError {
  const code = (err as NodeJS.ErrnoException)?.code ?? String(err);
  return new FerryError(
    'TRANSPORT_UNAVAILABLE',
    `backing file ${target} of ${image.path} cannot be opened from this proxy: ${code}`,
    { disk: diskName, file: target },
  );
}
