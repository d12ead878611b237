// A frozen VM's guest RAM (its template file) as the checkpoint writer reads
// it (GuestMemory), by one of three paths:
// - packed (the default with the addon): each block's runs of data read with
//   pread by the addon in libuv's thread pool, then scanned, packed and
//   hashed there (readPackBlock): the writer gets blocks packed, its thread
//   does none of that work, and nothing is mapped (no page faults, no munmap,
//   no mapping windows counted as V8 external memory). Holes are known zero
//   pages, never read.
// - mmap: the file mapped read-only through the native addon
//   (native-mmap.ts), so the writer's zero-page check, hash and LZ4 read guest
//   RAM in place, as QEMU does, instead of copying every byte out of tmpfs
//   first (measured: that copy was ~0.47 s of CPU per GiB, a third of the
//   save). The file's holes (SEEK_DATA/SEEK_HOLE) are handed over as known
//   zero pages and never touched: reading a hole of a tmpfs file through a
//   mapping would allocate a page for it. Mapped in windows of 8 MiB,
//   each unmapped when the writer releases its last block; blocks not wholly
//   inside the file are read with pread.
// - pread: every block read into the writer's buffers (the fallback when the
//   addon is not built; the process warns once).
// All give the writer the same bytes, so the checkpoint file is the same.
// close() unmaps what is left: call it only after the writer has returned or
// thrown (it waits for every encoding that reads a block first).
import { open } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { BLOCK_BYTES, PAGE_BYTES } from './checkpoint-format.ts';
import type { GuestMemory, MemoryBlock } from './checkpoint-format.ts';
import { loadMmapAddon, mmapAddonOrNull } from './native-mmap.ts';
import type { MmapAddon } from './native-mmap.ts';

export type MemoryReadPath = 'packed' | 'mmap' | 'pread';

export interface OpenGuestMemory extends GuestMemory {
  /** How this memory is read. */
  readonly readPath: MemoryReadPath;
  close(): Promise<void>;
}

/**
 * Blocks per mapping (8 MiB). V8 counts a Buffer over a mapping as memory the process allocated and
 * starts a full garbage collection each time that count grows by 64 MiB: 64 MiB windows cost twelve
 * full collections per GiB saved (measured), 8 MiB ones none beyond the pread path's.
 */
const BLOCKS_PER_WINDOW = 8;
const BITMAP_BYTES = BLOCK_BYTES / PAGE_BYTES / 8;

async function preadBlock(file: FileHandle, i: number, into: Buffer): Promise<MemoryBlock> {
  let n = 0;
  for (;;) {
    const { bytesRead } = await file.read(into, n, BLOCK_BYTES - n, i * BLOCK_BYTES + n);
    if (bytesRead === 0) break;
    n += bytesRead;
    if (n === BLOCK_BYTES) break;
  }
  return { bytes: into.subarray(0, n) };
}

class PreadMemory implements OpenGuestMemory {
  readonly readPath = 'pread';
  constructor(private readonly file: FileHandle) {}

  block(i: number, into: Buffer): Promise<MemoryBlock> {
    return preadBlock(this.file, i, into);
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

/**
 * Where a file has data, asked in increasing order (SEEK_DATA, SEEK_HOLE): the last answer is reused while
 * the offset asked is before its end, since SEEK_HOLE scans the whole run of data and SEEK_DATA the whole
 * hole, so asking again for each block or window would scan the file once per block.
 */
class DataRanges {
  private known: { asked: number; from: number; to: number } | undefined;
  constructor(
    private readonly addon: MmapAddon,
    private readonly fd: number,
  ) {}

  /** The first run of data at or after `at` (Infinity when none). */
  dataAt(at: number): [number, number] {
    if (!this.known || at < this.known.asked || at >= this.known.to) {
      const range = this.addon.dataRange(this.fd, at);
      this.known = { asked: at, from: range ? range[0] : Infinity, to: range ? range[1] : Infinity };
    }
    return [Math.max(at, this.known.from), this.known.to];
  }

  /** A bitmap (bit p: page p of [start, end) is a hole), all ones when the range has no data. */
  holes(start: number, end: number): Uint8Array {
    const holes = new Uint8Array(Math.ceil((end - start) / PAGE_BYTES / 8)).fill(0xff);
    for (let at = start; at < end; ) {
      const [from, to] = this.dataAt(at);
      if (from >= end) break;
      for (let p = Math.floor((from - start) / PAGE_BYTES); p < Math.ceil((Math.min(to, end) - start) / PAGE_BYTES); p++) holes[p >> 3] = (holes[p >> 3] as number) & ~(1 << (p & 7));
      at = to;
    }
    return holes;
  }
}

/**
 * The default with the native addon: each block read with pread by the addon in libuv's thread pool,
 * only its runs of data (holes are known zero pages, never read), then scanned, packed in place and
 * hashed there (readPackBlock), so the writer gets it packed. No mapping: no page faults and no munmap
 * (measured, bench checkpoint --busy 2: ~140 ms of CPU per GiB through the mapping), and the event
 * loop's thread only hands blocks on.
 */
class PackedMemory implements OpenGuestMemory {
  readonly readPath = 'packed';
  private readonly ranges: DataRanges;
  /** Blocks wholly inside both the guest's memory size and the file: those are read by the addon. */
  private readonly packedBlocks: number;

  constructor(
    private readonly addon: MmapAddon,
    private readonly file: FileHandle,
    memoryBytes: number,
    fileBytes: number,
  ) {
    this.ranges = new DataRanges(addon, file.fd);
    this.packedBlocks = Math.floor(Math.min(memoryBytes, fileBytes) / BLOCK_BYTES);
  }

  async block(i: number, into: Buffer): Promise<MemoryBlock> {
    if (i >= this.packedBlocks) return preadBlock(this.file, i, into);
    const start = i * BLOCK_BYTES;
    const holes = this.ranges.holes(start, start + BLOCK_BYTES);
    const bitmap = Buffer.alloc(BITMAP_BYTES);
    if (holes.every((byte) => byte === 0xff)) return { bytes: into.subarray(0, 0), packed: { bitmap, count: 0, hash: 0n } };
    const [count, hash] = await this.addon.readPackBlock(this.file.fd, start, BLOCK_BYTES, holes.some((byte) => byte !== 0) ? holes : null, into, bitmap);
    return { bytes: into.subarray(0, count * PAGE_BYTES), packed: { bitmap, count, hash } };
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}

interface Window {
  first: number;
  blocks: number;
  buffer: Buffer;
  /** Bit p set: page p of the window is a hole (zero, not to be read). */
  holes: Uint8Array;
}

class MappedMemory implements OpenGuestMemory {
  readonly readPath = 'mmap';
  private readonly windows = new Map<number, Window>();
  private readonly ranges: DataRanges;
  /** Blocks wholly inside both the guest's memory size and the file: those are mapped. */
  private readonly mappedBlocks: number;

  constructor(
    private readonly addon: MmapAddon,
    private readonly file: FileHandle,
    memoryBytes: number,
    fileBytes: number,
  ) {
    this.mappedBlocks = Math.floor(Math.min(memoryBytes, fileBytes) / BLOCK_BYTES);
    this.ranges = new DataRanges(addon, file.fd);
  }

  async block(i: number, into: Buffer): Promise<MemoryBlock> {
    if (i >= this.mappedBlocks) return preadBlock(this.file, i, into);
    const w = Math.floor(i / BLOCKS_PER_WINDOW);
    const window = this.windows.get(w) ?? this.map(w);
    const b = i - window.first;
    const holes = window.holes.subarray(b * BITMAP_BYTES, (b + 1) * BITMAP_BYTES);
    return { bytes: window.buffer.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES), ...(holes.some((byte) => byte !== 0) ? { zeroPages: holes } : {}) };
  }

  private map(w: number): Window {
    const first = w * BLOCKS_PER_WINDOW;
    const blocks = Math.min(BLOCKS_PER_WINDOW, this.mappedBlocks - first);
    const start = first * BLOCK_BYTES;
    const end = start + blocks * BLOCK_BYTES;
    const buffer = this.addon.map(this.file.fd, start, end - start);
    const window = { first, blocks, buffer, holes: this.ranges.holes(start, end) };
    this.windows.set(w, window);
    return window;
  }

  release(i: number): void {
    for (const [w, window] of this.windows) {
      if (window.first + window.blocks - 1 <= i) {
        this.addon.unmap(window.buffer);
        this.windows.delete(w);
      }
    }
  }

  async close(): Promise<void> {
    for (const window of this.windows.values()) this.addon.unmap(window.buffer);
    this.windows.clear();
    await this.file.close();
  }
}

/**
 * Opens a guest RAM file of `memoryBytes` for the checkpoint writer. `readPath`: 'auto' (the default)
 * reads and packs it by the addon ('packed'), or reads it with pread (warning once) when the native
 * addon is not built; 'packed' and 'mmap' insist on the addon (NativeAddonMissingError without it);
 * 'pread' reads it.
 */
export async function openGuestMemory(path: string, memoryBytes: number, readPath: MemoryReadPath | 'auto' = 'auto'): Promise<OpenGuestMemory> {
  const addon = readPath === 'pread' ? null : readPath === 'auto' ? mmapAddonOrNull() : loadMmapAddon();
  const file = await open(path, 'r');
  try {
    if (!addon) return new PreadMemory(file);
    const fileBytes = (await file.stat()).size;
    return readPath === 'mmap' ? new MappedMemory(addon, file, memoryBytes, fileBytes) : new PackedMemory(addon, file, memoryBytes, fileBytes);
  } catch (err) {
    await file.close();
    throw err;
  }
}
