// Checkpoint format 1.1: blocks that do not compress are stored raw beside
// LZ4 blocks, and both round-trip byte for byte; a corrupt raw block is
// refused naming the block; a 1.0 file (every block LZ4) is still read; an
// index entry whose encoding or size does not fit its version is refused; a
// version newer than this reader's is refused as CHECKPOINT_VERSION.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, CHECKPOINT_VERSION, CheckpointFormatError, CheckpointReader, HEADER_BYTES, PAGE_BYTES, writeCheckpoint } from './checkpoint-format.ts';
import { readCheckpointMemory } from './checkpoint-testing.ts';

const BLOCKS = 6;
const MEMORY = BLOCKS * BLOCK_BYTES;

/** Text-like bytes that LZ4 compresses well. */
function compressible(bytes: number): Buffer {
  const words = ['guest ', 'memory ', 'page ', 'kernel ', 'offshoot ', 'block '];
  const out = Buffer.alloc(bytes);
  let o = 0;
  for (let i = 0; o < bytes; i++) o += out.write(`${words[(i * 7) % words.length]}${i % 97} `, o);
  return out;
}

describe('checkpoint format 1.1 (raw blocks)', () => {
  let dir: string;
  let memory: Buffer;
  let file: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'offshoot-ckraw-'));
    memory = Buffer.alloc(MEMORY);
    randomBytes(BLOCK_BYTES).copy(memory, 0); // block 0: random, stored raw
    compressible(BLOCK_BYTES).copy(memory, BLOCK_BYTES); // block 1: LZ4
    randomBytes(BLOCK_BYTES).copy(memory, 2 * BLOCK_BYTES); // block 2: random with zero pages, raw
    memory.fill(0, 2 * BLOCK_BYTES + 10 * PAGE_BYTES, 2 * BLOCK_BYTES + 50 * PAGE_BYTES);
    memory.fill(0, 2 * BLOCK_BYTES + 200 * PAGE_BYTES, 2 * BLOCK_BYTES + 201 * PAGE_BYTES);
    // block 3: zero; block 4: compressible with zero pages, LZ4
    compressible(BLOCK_BYTES / 2).copy(memory, 4 * BLOCK_BYTES + 64 * PAGE_BYTES);
    memory.fill(9, 6 * BLOCK_BYTES - PAGE_BYTES); // block 5: one page of one byte value, LZ4
    file = join(dir, 'vm.ckpt');
    await writeCheckpoint(file, { memoryBytes: MEMORY, readBlock: async (i, into) => memory.copy(into, 0, i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), metadata: { vm: 'raw' }, deviceState: Buffer.from('QEVM') });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  const reason = async (path: string) => {
    try {
      await readCheckpointMemory(path);
      return 'ok';
    } catch (err) {
      expect(err).toBeInstanceOf(CheckpointFormatError);
      return `${(err as CheckpointFormatError).code} ${(err as CheckpointFormatError).part}`;
    }
  };
  /** Byte offset of block `i`'s index entry in the file. */
  const entryAt = (b: Buffer, i: number) => {
    const tocOffset = Number(b.readBigUInt64LE(40));
    return tocOffset + 24 + b.readUInt32LE(tocOffset) + b.readUInt32LE(tocOffset + 4) + i * 56;
  };
  const rehash = (b: Buffer) => {
    const tocOffset = Number(b.readBigUInt64LE(40));
    b.writeBigUInt64LE(xxh64(b.subarray(tocOffset, b.length - 8)), b.length - 8);
    b.writeBigUInt64LE(xxh64(b.subarray(0, 56)), 56);
    return b;
  };
  const variant = (name: string, change: (b: Buffer) => Buffer) => {
    const path = join(dir, name);
    writeFileSync(path, change(Buffer.from(readFileSync(file))));
    return path;
  };

  it('stores incompressible blocks raw beside LZ4 blocks, and both round-trip', async () => {
    const reader = await CheckpointReader.open(file);
    const info = Array.from({ length: BLOCKS }, (_, i) => reader.blockInfo(i));
    await reader.close();
    expect(readFileSync(file).readUInt32LE(8)).toBe(CHECKPOINT_VERSION);
    expect(info.map((b) => (b.pageCount === 0 ? 'zero' : b.encoding))).toEqual(['raw', 'lz4', 'raw', 'zero', 'lz4', 'lz4']);
    expect(info[0]).toEqual({ encoding: 'raw', storedBytes: BLOCK_BYTES, pageCount: 256 });
    expect(info[2]).toEqual({ encoding: 'raw', storedBytes: (256 - 41) * PAGE_BYTES, pageCount: 256 - 41 });
    expect(info[1]?.storedBytes).toBeLessThan(BLOCK_BYTES / 2);
    expect((await readCheckpointMemory(file)).equals(memory)).toBe(true);
    const restored = join(dir, 'restored.ram');
    const r2 = await CheckpointReader.open(file);
    await r2.restoreInto(restored);
    await r2.close();
    expect(readFileSync(restored).equals(memory)).toBe(true);
  });

  it('refuses a corrupt raw block, naming it', async () => {
    const flipped = variant('flip-raw.ckpt', (b) => {
      b[HEADER_BYTES + 5000] = (b[HEADER_BYTES + 5000] as number) ^ 0x10;
      return b;
    });
    expect(await reason(flipped)).toBe('CHECKPOINT_CORRUPT block 0');
    const reader = await CheckpointReader.open(flipped);
    // The eager restore refuses it too (and names it).
    await expect(reader.restoreInto(join(dir, 'bad.ram'))).rejects.toMatchObject({ code: 'CHECKPOINT_CORRUPT', part: 'block 0' });
    await reader.close();
  });

  it('refuses index entries that do not fit their encoding', async () => {
    // A raw entry whose stored size is not its pages, an unknown encoding, a non-zero reserved byte.
    const shortRaw = variant('short-raw.ckpt', (b) => {
      b.writeUInt32LE(BLOCK_BYTES - 1, entryAt(b, 0) + 8);
      return rehash(b);
    });
    expect(await reason(shortRaw)).toBe('CHECKPOINT_CORRUPT index');
    expect(await reason(variant('enc.ckpt', (b) => (b.writeUInt8(7, entryAt(b, 1) + 14), rehash(b))))).toBe('CHECKPOINT_CORRUPT index');
    expect(await reason(variant('reserved.ckpt', (b) => (b.writeUInt8(1, entryAt(b, 1) + 15), rehash(b))))).toBe('CHECKPOINT_CORRUPT index');
    // An LZ4 entry claiming as many bytes as its raw pages (1.1 writers store those raw).
    const fatLz4 = variant('fat-lz4.ckpt', (b) => (b.writeUInt8(0, entryAt(b, 0) + 14), rehash(b)));
    expect(await reason(fatLz4)).toBe('CHECKPOINT_CORRUPT index');
  });

  it('reads a 1.0 file (every block LZ4) and refuses raw blocks in one', async () => {
    // A file of compressible memory only has LZ4 blocks: as 1.0 it is the same bytes but the version.
    const lz4Only = join(dir, 'lz4.ckpt');
    const text = Buffer.alloc(2 * BLOCK_BYTES);
    compressible(BLOCK_BYTES).copy(text, 0);
    await writeCheckpoint(lz4Only, { memoryBytes: text.length, readBlock: async (i, into) => text.copy(into, 0, i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES), metadata: {}, deviceState: Buffer.alloc(4) });
    const v10 = join(dir, 'v10.ckpt');
    const bytes = Buffer.from(readFileSync(lz4Only));
    bytes.writeUInt32LE(1, 8);
    writeFileSync(v10, rehash(bytes));
    const reader = await CheckpointReader.open(v10);
    const buf = Buffer.alloc(BLOCK_BYTES);
    await reader.readBlock(0, buf);
    await reader.close();
    expect(buf.equals(text.subarray(0, BLOCK_BYTES))).toBe(true);
    // The raw file's entries under a 1.0 header: raw is not a 1.0 encoding.
    expect(await reason(variant('v10-raw.ckpt', (b) => (b.writeUInt32LE(1, 8), rehash(b))))).toBe('CHECKPOINT_CORRUPT index');
  });

  it('refuses a newer minor or another major as CHECKPOINT_VERSION', async () => {
    expect(await reason(variant('minor2.ckpt', (b) => (b.writeUInt32LE(1 | (2 << 16), 8), rehash(b))))).toBe('CHECKPOINT_VERSION header');
    expect(await reason(variant('major2.ckpt', (b) => (b.writeUInt32LE(2 | (1 << 16), 8), rehash(b))))).toBe('CHECKPOINT_VERSION header');
  });
});
