// Guest RAM read through the native addon against real tmpfs files: the
// mapping sees the file's bytes and its holes, and goes when unmapped; a
// checkpoint saved through the mapping is byte for byte the file the pread
// path writes for the same RAM file (random, compressible, partly zero and
// hole blocks, two mapping windows, a short file and a ragged end), reads
// back as the RAM, and leaves the RAM file's holes unallocated; a cancelled
// mapped save leaves no file and unmaps cleanly.
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, PAGE_BYTES, writeCheckpoint } from './checkpoint-format.ts';
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

  const save = async (path: string, readPath: 'mmap' | 'pread', signal?: AbortSignal, onProgress?: () => void) => {
    const memory = await openGuestMemory(ramFile, MEMORY, readPath);
    expect(memory.readPath).toBe(readPath);
    try {
      return await writeCheckpoint(path, { memoryBytes: MEMORY, memory, metadata: { vm: 'gmem' }, deviceState: Buffer.from('QEVM'), stagingBytes: 4 * MiB, signal, onProgress });
    } finally {
      await memory.close();
    }
  };

  it('saves through the mapping exactly the file the pread path writes, without allocating the holes', async () => {
    const allocated = statSync(ramFile).blocks;
    const viaPread = join(dir, 'pread.ckpt');
    const viaMmap = join(dir, 'mmap.ckpt');
    const p = await save(viaPread, 'pread');
    const m = await save(viaMmap, 'mmap');
    expect(statSync(ramFile).blocks).toBe(allocated);
    expect(m.timings.rawBlocks).toBeGreaterThan(0);
    expect(m.timings.lz4Blocks).toBeGreaterThan(0);
    expect(m.timings.zeroBlocks).toBeGreaterThan(0);
    expect({ ...m, timings: undefined }).toEqual({ ...p, timings: undefined });
    expect(readFileSync(viaMmap).equals(readFileSync(viaPread))).toBe(true);
    expect((await readCheckpointMemory(viaMmap)).equals(ram)).toBe(true);
    // The default path is the mapping when the addon is built.
    const auto = await openGuestMemory(ramFile, MEMORY);
    expect(auto.readPath).toBe('mmap');
    await auto.close();
  });

  it('a mapped save cancelled while blocks are encoding leaves no file and unmaps after the encodings', async () => {
    const path = join(dir, 'cancelled.ckpt');
    const controller = new AbortController();
    await expect(save(path, 'mmap', controller.signal, () => controller.abort())).rejects.toThrow();
    expect(() => statSync(path)).toThrow();
    expect(() => statSync(`${path}.partial`)).toThrow();
  });
});
