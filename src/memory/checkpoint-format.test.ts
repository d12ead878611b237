// The checkpoint format against real files: a round trip of 64 MiB of guest
// memory (half random, half zero, some blocks partly zero) is byte-identical;
// zero pages take no space; a flipped byte, a truncation, a wrong version or
// magic is refused naming the part; a cancelled write leaves no file.
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { xxh64 } from '@node-rs/xxhash';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_BYTES, CheckpointFormatError, CheckpointReader, HEADER_BYTES, writeCheckpoint } from './checkpoint-format.ts';

const MEMORY = 64 * 1024 * 1024;

describe('checkpoint format', () => {
  let dir: string;
  let memory: Buffer;
  let file: string;

  const write = (path: string, signal?: AbortSignal) =>
    writeCheckpoint(path, {
      memoryBytes: MEMORY,
      readBlock: async (i, into) => memory.copy(into, 0, i * BLOCK_BYTES, Math.min(MEMORY, (i + 1) * BLOCK_BYTES)),
      metadata: { vm: 'test', disks: [{ path: '/x.qcow2', contentId: 'abc' }] },
      deviceState: randomBytes(300_000),
      stagingBytes: 4 * 1024 * 1024,
      signal,
    });
  const reason = async (path: string) => {
    try {
      const r = await CheckpointReader.open(path);
      try {
        const buf = Buffer.alloc(BLOCK_BYTES);
        for (let i = 0; i < r.blockCount; i++) await r.readBlock(i, buf);
      } finally {
        await r.close();
      }
      return 'ok';
    } catch (err) {
      expect(err).toBeInstanceOf(CheckpointFormatError);
      return `${(err as CheckpointFormatError).code} ${(err as CheckpointFormatError).part}`;
    }
  };
  const copyWith = (name: string, change: (b: Buffer) => Buffer) => {
    const path = join(dir, name);
    writeFileSync(path, change(Buffer.from(readFileSync(file))));
    return path;
  };

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'offshoot-ckpt-'));
    memory = Buffer.alloc(MEMORY);
    randomBytes(MEMORY / 2).copy(memory, 0);
    memory.fill(0, 5 * BLOCK_BYTES + 4096 * 10, 5 * BLOCK_BYTES + 4096 * 200); // a partly zero block
    memory.fill(7, MEMORY - 4096, MEMORY); // one non-zero page in the last block
    file = join(dir, 'vm.ckpt');
    const result = await write(file);
    expect(result.blockCount).toBe(64);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('round-trips guest memory byte for byte and elides zero pages', async () => {
    const reader = await CheckpointReader.open(file);
    expect(reader.metadata).toEqual({ vm: 'test', disks: [{ path: '/x.qcow2', contentId: 'abc' }] });
    expect(reader.deviceState.length).toBe(300_000);
    expect(reader.storedPages).toBe((MEMORY / 2) / 4096 - 190 + 1);
    const restored = join(dir, 'restored.ram');
    await reader.restoreInto(restored);
    await reader.close();
    expect(createHash('sha256').update(readFileSync(restored)).digest('hex')).toBe(createHash('sha256').update(memory).digest('hex'));
    // Random data does not compress, zero pages are not stored: the file is about the non-zero half.
    expect(statSync(file).size).toBeLessThan(MEMORY / 2 + 2 * 1024 * 1024);
    expect(statSync(restored).blocks * 512).toBeLessThan(MEMORY / 2 + 2 * BLOCK_BYTES);
  });

  it('loads the one block that holds a page', async () => {
    const reader = await CheckpointReader.open(file);
    const at = 5 * BLOCK_BYTES + 4096 * 100 + 17;
    const block = reader.blockOf(at);
    expect(block).toBe(5);
    const buf = Buffer.alloc(BLOCK_BYTES);
    await reader.readBlock(block, buf);
    expect(buf.equals(memory.subarray(5 * BLOCK_BYTES, 6 * BLOCK_BYTES))).toBe(true);
    await reader.close();
  });

  it('refuses a flipped byte in a memory block, naming the block', async () => {
    const path = copyWith('flip.ckpt', (b) => {
      b[HEADER_BYTES + 1000] = (b[HEADER_BYTES + 1000] as number) ^ 0xff;
      return b;
    });
    expect(await reason(path)).toBe('CHECKPOINT_CORRUPT block 0');
  });

  it('refuses truncation, a damaged table of contents, a wrong version or magic', async () => {
    expect(await reason(copyWith('trunc.ckpt', (b) => b.subarray(0, b.length - 100)))).toBe('CHECKPOINT_CORRUPT table of contents');
    expect(await reason(copyWith('short.ckpt', (b) => b.subarray(0, 10)))).toBe('CHECKPOINT_CORRUPT header');
    expect(
      await reason(
        copyWith('toc.ckpt', (b) => {
          b[b.length - 50] = (b[b.length - 50] as number) ^ 1;
          return b;
        }),
      ),
    ).toBe('CHECKPOINT_CORRUPT table of contents');
    const version = copyWith('version.ckpt', (b) => {
      b.writeUInt32LE(2, 8);
      b.writeBigUInt64LE(xxh64(b.subarray(0, 56)), 56);
      return b;
    });
    expect(await reason(version)).toBe('CHECKPOINT_VERSION header');
    expect(await reason(copyWith('magic.ckpt', (b) => (b.write('NOTACKPT', 0, 'ascii'), b)))).toBe('CHECKPOINT_CORRUPT header');
    expect(await reason(join(dir, 'missing.ckpt'))).toBe('CHECKPOINT_NOT_FOUND file');
  });

  it('round-trips guest memory that ends in a partial block (RAM 8 KiB past a whole MiB, as on TCG hosts)', async () => {
    const bytes = 3 * BLOCK_BYTES + 8 * 1024;
    const partial = randomBytes(bytes);
    partial.fill(0, BLOCK_BYTES, 2 * BLOCK_BYTES);
    const path = join(dir, 'partial.ckpt');
    const written = await writeCheckpoint(path, { memoryBytes: bytes, readBlock: async (i, into) => partial.copy(into, 0, i * BLOCK_BYTES, Math.min(bytes, (i + 1) * BLOCK_BYTES)), metadata: {}, deviceState: Buffer.from('QEVM') });
    expect(written.blockCount).toBe(4);
    const reader = await CheckpointReader.open(path);
    expect(reader.memoryBytes).toBe(bytes);
    // The last block holds two pages and zeros after them.
    const last = Buffer.alloc(BLOCK_BYTES, 0xee);
    await reader.readBlock(3, last);
    expect(last.subarray(0, 8192).equals(partial.subarray(3 * BLOCK_BYTES))).toBe(true);
    expect(last.subarray(8192).every((b) => b === 0)).toBe(true);
    const restored = join(dir, 'partial.ram');
    await reader.restoreInto(restored);
    await reader.close();
    expect(statSync(restored).size).toBe(bytes);
    expect(readFileSync(restored).equals(partial)).toBe(true);
  });

  it('leaves no file when the write is cancelled', async () => {
    const abort = new AbortController();
    abort.abort();
    await expect(write(join(dir, 'cancelled.ckpt'), abort.signal)).rejects.toThrow();
    expect(existsSync(join(dir, 'cancelled.ckpt'))).toBe(false);
    expect(existsSync(join(dir, 'cancelled.ckpt.partial'))).toBe(false);
  });
});
