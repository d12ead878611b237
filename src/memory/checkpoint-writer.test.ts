// The checkpoint writer's output: the file it writes (zero pages found by the
// native scan, blocks gathered and written while the next are compressed) is
// byte for byte the file a plain serial encoder of format 1.1 writes from the
// same RAM, whatever the write size, however RAM is handed over (read into
// the writer's buffers, or views of the source's memory) and whether blocks
// are packed by the addon in the thread pool or here; a block's memory is
// released only after its bytes are taken; the stored bytes are the same
// written with O_DIRECT through aligned staging buffers (/var/tmp is ext4
// here) as in writev batches, and on tmpfs (whose page cache is the file)
// the writer keeps to the batches; the native page scan finds exactly the pages
// the JavaScript compare finds.
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { compressSync } from 'lz4-napi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, CHECKPOINT_MAGIC, CHECKPOINT_VERSION, HEADER_BYTES, PAGE_BYTES, PAGES_PER_BLOCK, scanPages, writeCheckpoint } from './checkpoint-format.ts';
import type { GuestMemory } from './checkpoint-format.ts';
import { readCheckpointMemory } from './checkpoint-testing.ts';
import { loadMmapAddon } from './native-mmap.ts';

/** 13 blocks and a ragged end (a last page of 100 bytes). */
const MEMORY = 13 * BLOCK_BYTES + 2 * PAGE_BYTES + 100;
const BLOCKS = Math.ceil(MEMORY / BLOCK_BYTES);

function compressible(bytes: number, seed: number): Buffer {
  const out = Buffer.alloc(bytes);
  let o = 0;
  for (let i = 0; o < bytes; i++) o += out.write(`kernel page ${(i * seed) % 89} slab ${i % 13} `, o);
  return out;
}

/** Guest RAM of every kind of block the writer meets. */
function makeRam(): Buffer {
  const ram = Buffer.alloc(MEMORY);
  const put = (data: Buffer, at: number) => data.copy(ram, at);
  put(randomBytes(2 * BLOCK_BYTES), 0); // 0-1: random, raw, whole
  put(compressible(BLOCK_BYTES, 3), 2 * BLOCK_BYTES); // 2: LZ4, whole
  put(randomBytes(BLOCK_BYTES), 3 * BLOCK_BYTES); // 3: random with zero pages: raw, packed
  ram.fill(0, 3 * BLOCK_BYTES + 5 * PAGE_BYTES, 3 * BLOCK_BYTES + 70 * PAGE_BYTES);
  // 4: zero; 5: compressible with zero pages: LZ4, packed
  put(compressible(30 * PAGE_BYTES, 5), 5 * BLOCK_BYTES + 100 * PAGE_BYTES);
  put(compressible(PAGE_BYTES, 7), 5 * BLOCK_BYTES + 255 * PAGE_BYTES);
  // 6: 3 KiB compressible, then random: the sample compresses, the block does not (raw)
  put(compressible(3072, 11), 6 * BLOCK_BYTES);
  put(randomBytes(BLOCK_BYTES - 3072), 6 * BLOCK_BYTES + 3072);
  ram.fill(1, 7 * BLOCK_BYTES + 17, 7 * BLOCK_BYTES + 18); // 7: one byte
  // 8-9: zero; 10-12: random, raw
  put(randomBytes(3 * BLOCK_BYTES), 10 * BLOCK_BYTES);
  put(randomBytes(2 * PAGE_BYTES + 100), 13 * BLOCK_BYTES); // 13: the ragged end
  return ram;
}

/**
 * Format 1.1 as its specification says (checkpoint-format.ts header), one block after the other: the
 * non-zero pages packed (a short last page zero-padded), LZ4 unless the first stored page saves less
 * than half compressed or the block does not shrink, then the table of contents and the header.
 */
function referenceFile(ram: Buffer, metadata: object, deviceState: Buffer): Buffer {
  const parts: Buffer[] = [];
  const entries: Buffer[] = [];
  let offset = HEADER_BYTES;
  for (let i = 0; i < BLOCKS; i++) {
    const block = Buffer.alloc(BLOCK_BYTES);
    ram.copy(block, 0, i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES));
    const pagesInBlock = Math.ceil((Math.min(MEMORY, (i + 1) * BLOCK_BYTES) - i * BLOCK_BYTES) / PAGE_BYTES);
    const bitmap = Buffer.alloc(32);
    const pages: Buffer[] = [];
    for (let p = 0; p < pagesInBlock; p++) {
      const page = block.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
      if (page.every((b) => b === 0)) continue;
      bitmap[p >> 3] = (bitmap[p >> 3] as number) | (1 << (p & 7));
      pages.push(page);
    }
    const entry = Buffer.alloc(56);
    entry.writeBigUInt64LE(BigInt(offset), 0);
    bitmap.copy(entry, 16);
    if (pages.length > 0) {
      const packed = Buffer.concat(pages);
      const sample = compressSync(packed.subarray(0, PAGE_BYTES));
      const lz4 = sample.length > PAGE_BYTES / 2 ? undefined : compressSync(packed);
      const stored = lz4 && lz4.length < packed.length ? lz4 : packed;
      entry.writeUInt32LE(stored.length, 8);
      entry.writeUInt16LE(pages.length, 12);
      entry.writeUInt8(stored === packed ? 1 : 0, 14);
      entry.writeBigUInt64LE(xxh64(stored), 48);
      parts.push(stored);
      offset += stored.length;
    }
    entries.push(entry);
  }
  const meta = Buffer.from(JSON.stringify(metadata));
  const fixed = Buffer.alloc(24);
  fixed.writeUInt32LE(meta.length, 0);
  fixed.writeUInt32LE(deviceState.length, 4);
  fixed.writeBigUInt64LE(xxh64(meta), 8);
  fixed.writeBigUInt64LE(xxh64(deviceState), 16);
  const body = Buffer.concat([fixed, meta, deviceState, ...entries]);
  const tocHash = Buffer.alloc(8);
  tocHash.writeBigUInt64LE(xxh64(body));
  const toc = Buffer.concat([body, tocHash]);
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(CHECKPOINT_MAGIC, 0, 'ascii');
  header.writeUInt32LE(CHECKPOINT_VERSION, 8);
  header.writeUInt32LE(HEADER_BYTES, 12);
  header.writeUInt32LE(BLOCK_BYTES, 16);
  header.writeUInt32LE(PAGE_BYTES, 20);
  header.writeBigUInt64LE(BigInt(MEMORY), 24);
  header.writeUInt32LE(BLOCKS, 32);
  header.writeBigUInt64LE(BigInt(offset), 40);
  header.writeUInt32LE(toc.length, 48);
  header.writeBigUInt64LE(xxh64(header.subarray(0, 56)), 56);
  return Buffer.concat([header, ...parts, toc]);
}

/**
 * Guest RAM handed over as views of a copy the source owns, like a mapping: release(i) overwrites blocks
 * 0..i of that copy, so a block staged after its release would reach the file as garbage.
 */
function viewMemory(ram: Buffer): GuestMemory & { releases: number } {
  const own = Buffer.from(ram);
  const memory = {
    releases: 0,
    block: async (i: number) => ({ bytes: own.subarray(i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES)) }),
    release: (i: number) => {
      memory.releases++;
      own.fill(0xee, 0, Math.min(MEMORY, (i + 1) * BLOCK_BYTES));
    },
  };
  return memory;
}

describe('checkpoint writer: output', () => {
  let dir: string;
  let ram: Buffer;
  let reference: Buffer;
  const metadata = { vm: 'writer', disks: [] };
  const deviceState = Buffer.from('QEVM device state');

  beforeAll(() => {
    dir = mkdtempSync('/var/tmp/offshoot-ckwriter-');
    ram = makeRam();
    reference = referenceFile(ram, metadata, deviceState);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes byte for byte what a plain serial encoder writes, read into its buffers or from views, packed by the addon or here, with O_DIRECT or in batches, whatever the write size', async () => {
    for (const direct of [true, false]) {
      for (const nativePack of [true, false]) {
        for (const stagingBytes of [undefined, BLOCK_BYTES, 3 * BLOCK_BYTES]) {
          const label = `${direct ? 'direct' : 'batches'}-${nativePack ? 'native' : 'js'}-${stagingBytes}`;
          const viaRead = join(dir, `read-${label}.ckpt`);
          const w = await writeCheckpoint(viaRead, { memoryBytes: MEMORY, readBlock: async (i, into) => ram.copy(into, 0, i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES)), metadata, deviceState, nativePack, direct, ...(stagingBytes ? { stagingBytes } : {}) });
          expect(readFileSync(viaRead).equals(reference), `read, ${label}`).toBe(true);
          expect(w.fileBytes).toBe(reference.length);
          expect(w.timings).toMatchObject({ rawBlocks: 8, lz4Blocks: 3, zeroBlocks: 3, direct });
          const viaViews = join(dir, `views-${label}.ckpt`);
          const memory = viewMemory(ram);
          await writeCheckpoint(viaViews, { memoryBytes: MEMORY, memory, metadata, deviceState, nativePack, direct, ...(stagingBytes ? { stagingBytes } : {}) });
          expect(readFileSync(viaViews).equals(reference), `views, ${label}`).toBe(true);
          expect(memory.releases).toBeGreaterThan(0);
        }
      }
    }
    expect((await readCheckpointMemory(join(dir, 'views-direct-native-undefined.ckpt'))).equals(ram)).toBe(true);
  });

  it('keeps to batches on tmpfs, whose page cache is the file, with the same bytes', async () => {
    const shm = mkdtempSync('/dev/shm/offshoot-ckwriter-');
    try {
      const path = join(shm, 'tmpfs.ckpt');
      const w = await writeCheckpoint(path, { memoryBytes: MEMORY, readBlock: async (i, into) => ram.copy(into, 0, i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES)), metadata, deviceState });
      expect(w.timings.direct).toBe(false);
      expect(readFileSync(path).equals(reference)).toBe(true);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('removes the partial file when a write fails part way, on either path', async () => {
    for (const direct of [true, false]) {
      const path = join(dir, `fails-${direct}.ckpt`);
      const failing = { block: async (i: number, into: Buffer) => {
        if (i === 9) throw new Error('read failed at block 9');
        return { bytes: into.subarray(0, ram.copy(into, 0, i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES))) };
      } };
      await expect(writeCheckpoint(path, { memoryBytes: MEMORY, memory: failing, metadata, deviceState, direct, stagingBytes: BLOCK_BYTES })).rejects.toThrow(/block 9/);
      expect(existsSync(path)).toBe(false);
      expect(existsSync(`${path}.partial`)).toBe(false);
    }
  });

  it('the native page scan finds exactly the non-zero pages the JavaScript compare finds, and never reads known zero pages', () => {
    expect(typeof loadMmapAddon().scanPages).toBe('function');
    const block = Buffer.alloc(BLOCK_BYTES);
    randomBytes(BLOCK_BYTES / 2).copy(block);
    for (let p = 0; p < PAGES_PER_BLOCK; p += 3) block.fill(0, p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
    for (let p = 130; p < PAGES_PER_BLOCK; p += 7) block[p * PAGE_BYTES + 4095] = 1; // the last byte only
    block[200 * PAGE_BYTES + 2048] = 9; // the middle only
    const known = Buffer.alloc(32);
    known[1] = 0xff; // pages 8-15: "holes" (they hold data here: a scan that reads them counts them)
    for (const [bytes, k] of [[block, undefined], [block, known], [block.subarray(0, 37 * PAGE_BYTES), known], [Buffer.alloc(BLOCK_BYTES), undefined], [randomBytes(BLOCK_BYTES), undefined]] as const) {
      const nativeBits = Buffer.alloc(32, 0xaa); // cleared by the scan
      const jsBits = Buffer.alloc(32);
      const count = scanPages(bytes, k, nativeBits);
      expect(count).toBe(scanPages(bytes, k, jsBits, false));
      expect(nativeBits.equals(jsBits)).toBe(true);
      let bits = 0;
      for (const byte of nativeBits) for (let b = byte; b; b &= b - 1) bits++;
      expect(bits).toBe(count);
      if (k) expect(nativeBits[1]).toBe(0);
    }
    expect(scanPages(block, undefined, Buffer.alloc(32))).toBe(103); // 85 random pages in the first half, 18 with one byte set (page 200 twice)
    expect(() => scanPages(block.subarray(0, 100), undefined, Buffer.alloc(32))).toThrow(/whole pages/);
    expect(() => scanPages(block, undefined, Buffer.alloc(8))).toThrow(/bitmap 32 bytes/);
  });
});
