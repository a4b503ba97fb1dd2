/** The alignment `AlignedArena` gives every piece: a memory page, enough for `O_DIRECT` on any Linux device. */
export const ALIGNMENT = 4096;
const WASM_PAGE = 64 * 1024;
/** The most one arena holds (wasm memory32's limit is 4 GiB; a restore's slots take a few MiB). */
const MAX_PAGES = 16 * 1024;

/**
 * Shared memory whose pieces start on a page boundary, for buffers written with `O_DIRECT` (the
 * restore's block slots): Node's allocators promise 16 bytes, and a direct write from anything
 * less aligned than the device's DMA alignment fails with EINVAL. The memory is one shared
 * WebAssembly memory, which V8 maps page-aligned, grown as pieces are taken (pieces are never
 * given back: callers pool what they take). Where WebAssembly memory cannot be had (no
 * WebAssembly, an address-space limit), pieces are plain SharedArrayBuffers: their alignment is
 * then unknown and a direct write may fail, which the writer must handle.
 */
/** The part of WebAssembly's `Memory` used here (the project's type libraries do not declare WebAssembly). */
interface WasmMemory {
  readonly buffer: SharedArrayBuffer;
  grow(pages: number): number;
}
type WasmMemoryClass = new (d: { initial: number; maximum: number; shared: boolean }) => WasmMemory;

export class AlignedArena {
  private memory?: WasmMemory;
  private used = 0;
  private failed = false;

  /** `length` bytes of shared memory starting on an `ALIGNMENT` boundary (when `aligned` says so). */
  take(length: number): { view: Uint8Array; aligned: boolean } {
    const size = Math.ceil(Math.max(1, length) / ALIGNMENT) * ALIGNMENT;
    if (!this.failed) {
      try {
        const need = this.used + size;
        const pages = Math.ceil(need / WASM_PAGE);
        const Memory = (globalThis as { WebAssembly?: { Memory: WasmMemoryClass } }).WebAssembly!.Memory;
        this.memory ??= new Memory({ initial: pages, maximum: MAX_PAGES, shared: true });
        const have = this.memory.buffer.byteLength / WASM_PAGE;
        if (pages > have) this.memory.grow(pages - have);
        const view = new Uint8Array(this.memory.buffer, this.used, length);
        this.used = need;
        return { view, aligned: true };
      } catch {
        this.failed = true;
      }
    }
    return { view: new Uint8Array(new SharedArrayBuffer(length)), aligned: false };
  }
}
