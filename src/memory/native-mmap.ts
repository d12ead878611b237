// Loads Offshoot's native addon (native/mmap.c, built by `npm run setup` into
// dist/native/mmap.node): a read-only mmap of a file region as a Buffer, its
// explicit unmap, madvise, where the file has data (SEEK_DATA/SEEK_HOLE), a
// block's zero-page scan, and a block's scan, packing and XXH64 in the thread
// pool, from memory or read from a file. The checkpoint writer reads and
// packs guest RAM with it (guest-memory.ts, checkpoint-format.ts). A
// missing or unloadable addon is a NativeAddonMissingError telling the user
// to run `npm run setup`; mmapAddonOrNull() is the form for callers that fall
// back to plain reads (it warns once, as a process warning).
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { OffshootError } from '../common/index.ts';

/** What the addon exports (see native/mmap.c). */
export interface MmapAddon {
  /** A read-only MAP_SHARED mapping of `length` bytes of `fd` from `offset` (a page multiple). */
  map(fd: number, offset: number, length: number): Buffer;
  /** Unmaps a Buffer returned by map() now and detaches it (views then read as empty); false if it was not mapped. */
  unmap(buffer: Buffer): boolean;
  /** madvise on a page-aligned part of a mapped Buffer. */
  advise(buffer: Buffer, offset: number, length: number, advice: number): void;
  /** The file's first run of data (not a hole) at or after `offset`: [start, end), or null if none (SEEK_DATA, SEEK_HOLE). */
  dataRange(fd: number, offset: number): [number, number] | null;
  advice: { sequential: number; willneed: number; populateRead: number };
  /**
   * Sets bit p of `bitmap` (32 bytes, cleared first) for each 4 KiB page p of `buffer` (whole pages, at
   * most 256) that is not all zero and not marked in `known` (pages never read); returns how many.
   */
  scanPages(buffer: Uint8Array, known: Uint8Array | null, bitmap: Uint8Array): number;
  /**
   * scanPages, then the stored pages packed in page order into `into` and their XXH64, in libuv's thread
   * pool: [count, xxh64 of the packed pages]. `into` is `buffer` (packed in place) or does not overlap
   * it; neither may change or be unmapped until the promise settles.
   */
  packBlock(buffer: Uint8Array, known: Uint8Array | null, into: Uint8Array, bitmap: Uint8Array): Promise<[number, bigint]>;
  /**
   * packBlock of `length` bytes (whole pages, at most a block) of file `fd` from `offset`, read with
   * pread into `into` in the thread pool: pages marked in `known` are not read (holes: zero), pages past
   * the end of the file are zero. [count, xxh64 of the pages packed in place at the start of `into`].
   */
  readPackBlock(fd: number, offset: number, length: number, known: Uint8Array | null, into: Uint8Array, bitmap: Uint8Array): Promise<[number, bigint]>;
  /** XXH64, seed 0 (what @node-rs/xxhash's xxh64 computes). */
  xxh64(buffer: Uint8Array): bigint;
}

/** Where the build puts the addon, from this file (src/memory/) up to the checkout. */
export const MMAP_ADDON_PATH = fileURLToPath(new URL('../../dist/native/mmap.node', import.meta.url));

export class NativeAddonMissingError extends OffshootError {
  constructor(path: string, reason: string) {
    super('NATIVE_ADDON_MISSING', `the native addon ${path} is not usable (${reason}); run \`npm run setup\` to build it (needs Debian's gcc and nodejs headers)`, { path, reason }, 500);
  }
}

/** The functions this code calls: an addon without one of them is not usable. */
const ADDON_FUNCTIONS = ['map', 'unmap', 'advise', 'dataRange', 'scanPages', 'packBlock', 'readPackBlock', 'xxh64'] as const;

let loaded: { addon: MmapAddon } | { error: NativeAddonMissingError } | undefined;
let warned = false;

/** The addon; NativeAddonMissingError if it is not built or does not load. */
export function loadMmapAddon(): MmapAddon {
  if (!loaded) {
    try {
      if (!existsSync(MMAP_ADDON_PATH)) throw new NativeAddonMissingError(MMAP_ADDON_PATH, 'not built');
      const addon = createRequire(import.meta.url)(MMAP_ADDON_PATH) as Partial<MmapAddon>;
      // An addon built from an older native/mmap.c (setup not rerun since) lacks the newer functions.
      const missing = ADDON_FUNCTIONS.filter((name) => typeof addon[name] !== 'function');
      if (missing.length > 0) throw new NativeAddonMissingError(MMAP_ADDON_PATH, `built from older source: no ${missing.join(', ')}`);
      loaded = { addon: addon as MmapAddon };
    } catch (err) {
      loaded = { error: err instanceof NativeAddonMissingError ? err : new NativeAddonMissingError(MMAP_ADDON_PATH, (err as Error).message) };
    }
  }
  if ('error' in loaded) throw loaded.error;
  return loaded.addon;
}

/** The addon, or null (with one process warning naming the fix) when it is not usable. */
export function mmapAddonOrNull(): MmapAddon | null {
  try {
    return loadMmapAddon();
  } catch (err) {
    if (!(err instanceof NativeAddonMissingError)) throw err;
    if (!warned) {
      warned = true;
      process.emitWarning(`${err.message}; checkpoints read guest RAM with pread and find zero pages in JavaScript instead (slower)`, { code: err.code });
    }
    return null;
  }
}
