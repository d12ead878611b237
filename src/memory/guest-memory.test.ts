// Guest RAM read through the native addon against real tmpfs files: the
// mapping sees the file's bytes and its holes, and goes when unmapped; a
// checkpoint saved through the mapping is byte for byte the file the pread
// path writes for the same RAM file (random, compressible, partly zero and
// hole blocks, two mapping windows, a short file and a ragged end), reads
// back as the RAM, and leaves the RAM file's holes unallocated, and so is one
// whose blocks the addon reads and packs itself (readPackBlock); a cancelled
// mapped or packed save leaves no file and unmaps cleanly. The addon's XXH64
// is @node-rs/xxhash's; its packBlock and readPackBlock pack exactly the pages
// the scan finds, never read pages marked known zero, and fail on a bad fd.
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, PAGE_BYTES, PAGES_PER_BLOCK, scanPages, writeCheckpoint } from './checkpoint-format.ts';
import { readCheckpointMemory } from './checkpoint-testing.ts';
import { openGuestMemory } from './guest-memory.ts';
import { loadMmapAddon } from './native-mmap.ts';

const MiB = 1024 * 1024;
/** Two mapping windows (64 MiB each) and a ragged end; the file stops 200 KiB short of it. */
const MEMORY = 70 * MiB + 3 * PAGE_BYTES + 100;
const FILE_BYTES = MEMORY - 200 * 1024;

function compressible(bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  let o = 0;
  for (let i = 0; o < bytes; i++) o += out.write(`guest page ${i % 113} kernel ${i % 7} `, o);
  return out;
}

describe('guest memory through the native mmap addon', () => {
  let dir: string;
  let shm: string;
  let ramFile: string;
  /** The RAM file's bytes as pread sees them, zero-extended to MEMORY. */
  let ram: Buffer;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'offshoot-gmem-'));
    shm = mkdtempSync('/dev/shm/offshoot-gmem-');
    ramFile = join(shm, 'ram');
    const fd = openSync(ramFile, 'w');
    ftruncateSync(fd, FILE_BYTES); // sparse: untouched ranges stay holes
    const put = (data: Buffer, at: number) => writeSync(fd, data, 0, data.length, at);
    put(randomBytes(3 * BLOCK_BYTES), 0); // blocks 0-2: random (raw)
    put(compressible(2 * BLOCK_BYTES), 3 * BLOCK_BYTES); // blocks 3-4: LZ4
    put(randomBytes(BLOCK_BYTES), 5 * BLOCK_BYTES); // block 5: random with written zero pages
    put(Buffer.alloc(40 * PAGE_BYTES), 5 * BLOCK_BYTES + 10 * PAGE_BYTES);
    put(randomBytes(7 * PAGE_BYTES), 8 * BLOCK_BYTES + 100 * PAGE_BYTES); // block 8: mostly holes
    put(compressible(20 * PAGE_BYTES), 8 * BLOCK_BYTES + 200 * PAGE_BYTES);
    put(Buffer.alloc(BLOCK_BYTES), 9 * BLOCK_BYTES); // block 9: written zeros
    for (let b = 20; b < 69; b += 3) put(randomBytes(PAGE_BYTES * (1 + (b % 50))), b * BLOCK_BYTES + (b % 9) * PAGE_BYTES); // across the window boundary
    put(randomBytes(2 * BLOCK_BYTES), 62 * BLOCK_BYTES); // a run across the boundary at 64 MiB
    put(randomBytes(300 * 1024), 69 * BLOCK_BYTES + 100 * 1024); // blocks 69-70: past the last whole block of the file (pread)
    closeSync(fd);
    ram = Buffer.alloc(MEMORY);
    readFileSync(ramFile).copy(ram);
  });
  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
    rmSync(shm, { recursive: true, force: true });
  });

  it('maps a file region read-only: the bytes and holes of the file; unmap detaches the buffer', () => {
    const addon = loadMmapAddon();
    const fd = openSync(ramFile, 'r');
    try {
      const at = 5 * BLOCK_BYTES;
      const mapped = addon.map(fd, at, 4 * BLOCK_BYTES);
      expect(mapped.length).toBe(4 * BLOCK_BYTES);
      expect(mapped.subarray(0, BLOCK_BYTES).equals(ram.subarray(at, at + BLOCK_BYTES))).toBe(true);
      // Block 8's data: pages 100-106 and 200-219; blocks 6 and 7 are holes, and the file ends in one.
      expect(addon.dataRange(fd, at)).toEqual([at, at + BLOCK_BYTES]);
      expect(addon.dataRange(fd, at + BLOCK_BYTES)).toEqual([8 * BLOCK_BYTES + 100 * PAGE_BYTES, 8 * BLOCK_BYTES + 107 * PAGE_BYTES]);
      expect(addon.dataRange(fd, 8 * BLOCK_BYTES + 107 * PAGE_BYTES)).toEqual([8 * BLOCK_BYTES + 200 * PAGE_BYTES, 8 * BLOCK_BYTES + 220 * PAGE_BYTES]);
      expect(addon.dataRange(fd, 69 * BLOCK_BYTES + 400 * 1024)).toBeNull();
      const view = mapped.subarray(3 * BLOCK_BYTES + 100 * PAGE_BYTES, 3 * BLOCK_BYTES + 107 * PAGE_BYTES);
      expect(view.equals(ram.subarray(8 * BLOCK_BYTES + 100 * PAGE_BYTES, 8 * BLOCK_BYTES + 107 * PAGE_BYTES))).toBe(true);
      expect(addon.unmap(mapped)).toBe(true);
      expect(mapped.length).toBe(0);
      expect(view.length).toBe(0);
      expect(addon.unmap(mapped)).toBe(false);
      expect(addon.unmap(Buffer.alloc(4096))).toBe(false);
      expect(() => addon.map(fd, 100, 4096)).toThrow(/page size/);
    } finally {
      closeSync(fd);
    }
  });

  it('the addon hashes as @node-rs/xxhash does, and packs (from memory or read from the file) exactly the pages the scan finds', async () => {
    const addon = loadMmapAddon();
    for (const n of [0, 1, 3, 4, 7, 8, 31, 32, 33, 63, 100, 255, PAGE_BYTES, BLOCK_BYTES, 12345]) {
      const bytes = randomBytes(n);
      expect(addon.xxh64(bytes)).toBe(xxh64(bytes));
    }
    const fd = openSync(ramFile, 'r');
    try {
      for (const b of [0, 5, 8, 9, 20, 29, 62]) {
        const block = ram.subarray(b * BLOCK_BYTES, (b + 1) * BLOCK_BYTES);
        const expectedBits = Buffer.alloc(32);
        const count = scanPages(block, undefined, expectedBits, false);
        const packed = Buffer.concat(Array.from({ length: PAGES_PER_BLOCK }, (_, p) => p).filter((p) => ((expectedBits[p >> 3] as number) >> (p & 7)) & 1).map((p) => block.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES)));
        // From memory into another buffer, in place, and read from the file by the addon.
        const into = Buffer.alloc(BLOCK_BYTES, 0xee);
        const bits = Buffer.alloc(32, 0xaa);
        expect(await addon.packBlock(block, null, into, bits)).toEqual([count, xxh64(packed)]);
        expect(bits.equals(expectedBits)).toBe(true);
        expect(into.subarray(0, packed.length).equals(packed)).toBe(true);
        const copy = Buffer.from(block);
        expect(await addon.packBlock(copy, null, copy, Buffer.alloc(32))).toEqual([count, xxh64(packed)]);
        expect(copy.subarray(0, packed.length).equals(packed)).toBe(true);
        const read = Buffer.alloc(BLOCK_BYTES, 0xee);
        expect(await addon.readPackBlock(fd, b * BLOCK_BYTES, BLOCK_BYTES, null, read, bits)).toEqual([count, xxh64(packed)]);
        expect(read.subarray(0, packed.length).equals(packed)).toBe(true);
      }
      // Pages marked known zero are not read: a data page marked so is left out (and `into` keeps its bytes there).
      const known = Buffer.alloc(32);
      known[0] = 0b10; // page 1 of block 0 (random data)
      const into = Buffer.alloc(BLOCK_BYTES, 0xee);
      const bits = Buffer.alloc(32);
      const [count] = await addon.readPackBlock(fd, 0, BLOCK_BYTES, known, into, bits);
      expect(count).toBe(PAGES_PER_BLOCK - 1);
      expect(bits[0]).toBe(0xfd);
      expect(into.subarray(PAGE_BYTES, 2 * PAGE_BYTES).equals(ram.subarray(2 * PAGE_BYTES, 3 * PAGE_BYTES))).toBe(true);
      // Past the end of the file reads as zero.
      const tail = Math.floor(FILE_BYTES / PAGE_BYTES) * PAGE_BYTES - PAGE_BYTES;
      const [tailCount] = await addon.readPackBlock(fd, tail, 4 * PAGE_BYTES, null, Buffer.alloc(BLOCK_BYTES), Buffer.alloc(32));
      expect(tailCount).toBe(scanPages(ram.subarray(tail, tail + 4 * PAGE_BYTES), undefined, Buffer.alloc(32), false));
    } finally {
      closeSync(fd);
    }
    await expect(addon.readPackBlock(999_999, 0, BLOCK_BYTES, null, Buffer.alloc(BLOCK_BYTES), Buffer.alloc(32))).rejects.toThrow(/EBADF|Bad file/); // no such fd
    const buf = Buffer.alloc(BLOCK_BYTES);
    expect(() => addon.packBlock(buf.subarray(0, 2 * PAGE_BYTES), null, buf.subarray(PAGE_BYTES), Buffer.alloc(32))).toThrow(/overlaps/);
    expect(() => addon.readPackBlock(0, 0, 100, null, buf, Buffer.alloc(32))).toThrow(/whole pages/);
  });

  const save = async (path: string, readPath: 'packed' | 'mmap' | 'pread', signal?: AbortSignal, onProgress?: () => void) => {
    const memory = await openGuestMemory(ramFile, MEMORY, readPath);
    expect(memory.readPath).toBe(readPath);
    try {
      return await writeCheckpoint(path, { memoryBytes: MEMORY, memory, metadata: { vm: 'gmem' }, deviceState: Buffer.from('QEVM'), stagingBytes: 4 * MiB, signal, onProgress });
    } finally {
      await memory.close();
    }
  };

  it('saves through the mapping and read-and-packed by the addon exactly the file the pread path writes, without allocating the holes', async () => {
    const allocated = statSync(ramFile).blocks;
    const viaPread = join(dir, 'pread.ckpt');
    const p = await save(viaPread, 'pread');
    for (const readPath of ['mmap', 'packed'] as const) {
      const path = join(dir, `${readPath}.ckpt`);
      const m = await save(path, readPath);
      expect(statSync(ramFile).blocks).toBe(allocated);
      expect(m.timings.rawBlocks).toBeGreaterThan(0);
      expect(m.timings.lz4Blocks).toBeGreaterThan(0);
      expect(m.timings.zeroBlocks).toBeGreaterThan(0);
      expect({ ...m, timings: undefined }).toEqual({ ...p, timings: undefined });
      expect(readFileSync(path).equals(readFileSync(viaPread))).toBe(true);
      expect((await readCheckpointMemory(path)).equals(ram)).toBe(true);
    }
    // The default path is the addon's read-and-pack when it is built.
    const auto = await openGuestMemory(ramFile, MEMORY);
    expect(auto.readPath).toBe('packed');
    await auto.close();
  });

  it('a mapped or packed save cancelled while blocks are encoding leaves no file and unmaps after the encodings', async () => {
    for (const readPath of ['mmap', 'packed'] as const) {
      const path = join(dir, `cancelled-${readPath}.ckpt`);
      const controller = new AbortController();
      await expect(save(path, readPath, controller.signal, () => controller.abort())).rejects.toThrow();
      expect(() => statSync(path)).toThrow();
      expect(() => statSync(`${path}.partial`)).toThrow();
    }
  });
});
