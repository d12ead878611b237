// Offshoot's checkpoint file: guest memory in fixed-size storage blocks
// (1 MiB of guest pages each), each block holding only its non-zero pages,
// compressed with LZ4 and checksummed (xxh64); the metadata (VM spec, disk
// references), QEMU's device state and an index from guest address to block
// follow in a table of contents. Blocks are written through a staging buffer
// that is flushed with one write when full (fewer, larger I/Os). The reader is
// strict: a wrong magic or version, a size past a limit, a truncated file or a
// checksum mismatch is a CheckpointFormatError naming the part, never garbage.
//
// Version 1, integers little-endian:
//
//   0 +--------------------------------------------------------------+
//     | header (64 bytes)                                             |
//     |  0 magic "OFFSHCK1"        8 | 24 memoryBytes   u64          |
//     |  8 version u32 (=1)          | 32 blockCount    u32          |
//     | 12 headerBytes u32 (=64)     | 36 reserved      u32          |
//     | 16 blockBytes u32 (1 MiB)    | 40 tocOffset     u64          |
//     | 20 pageBytes u32 (4096)      | 48 tocBytes u32, 52 reserved  |
//     |                              | 56 xxh64 of bytes 0..55       |
//  64 +--------------------------------------------------------------+
//     | storage blocks, back to back: LZ4(block's non-zero pages, in  |
//     | page order); an all-zero block stores nothing                 |
//     +--------------------------------------------------------------+
//     | table of contents (tocBytes)                                  |
//     |  metaBytes u32 | deviceBytes u32 | metaHash u64 | devHash u64 |
//     |  metadata (JSON, metaBytes)                                   |
//     |  device state (QEMU migration stream, deviceBytes)            |
//     |  index, blockCount entries of 56 bytes:                       |
//     |    fileOffset u64 | storedBytes u32 | pageCount u32 |         |
//     |    page bitmap (32 bytes, bit i = page i stored) | xxh64 u64  |
//     |  xxh64 of the table of contents above                         |
//     +--------------------------------------------------------------+  end of file
import { open, rename, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { xxh64 } from '@node-rs/xxhash';
import { compressSync, uncompressSync } from 'lz4-napi';
import { OffshootError } from '../common/index.ts';

export const CHECKPOINT_MAGIC = 'OFFSHCK1';
export const CHECKPOINT_VERSION = 1;
export const HEADER_BYTES = 64;
export const PAGE_BYTES = 4096;
export const PAGES_PER_BLOCK = 256;
export const BLOCK_BYTES = PAGE_BYTES * PAGES_PER_BLOCK;
const INDEX_ENTRY_BYTES = 56;
const TOC_FIXED_BYTES = 24;

/** Limits the reader enforces before trusting any size in a file. */
export const LIMITS = {
  memoryBytes: 1024 ** 4,
  metadataBytes: 16 * 1024 * 1024,
  deviceStateBytes: 256 * 1024 * 1024,
};

export type CheckpointPart = 'file' | 'header' | 'table of contents' | 'metadata' | 'device state' | 'index' | `block ${number}`;

export class CheckpointFormatError extends OffshootError {
  readonly part: CheckpointPart;
  constructor(path: string, part: CheckpointPart, reason: string, code = 'CHECKPOINT_CORRUPT') {
    super(code, `checkpoint ${path}: ${part}: ${reason}`, { path, part, reason }, 400);
    this.part = part;
  }
}

export interface CheckpointMetadata {
  [key: string]: unknown;
}

interface IndexEntry {
  fileOffset: number;
  storedBytes: number;
  pageCount: number;
  bitmap: Buffer;
  hash: bigint;
}

function hash(data: Uint8Array): bigint {
  return xxh64(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
}

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

function isZeroPage(buf: Buffer, offset: number): boolean {
  // A native memcmp against a zero page.
  return buf.subarray(offset, offset + PAGE_BYTES).equals(ZERO_PAGE);
}

export interface WriteProgress {
  blocksDone: number;
  blockCount: number;
  bytesWritten: number;
}

/**
 * Writes a checkpoint: memory blocks from `readBlock` (each BLOCK_BYTES of guest RAM, the last one
 * possibly shorter), then the table of contents. Writes to PATH.partial and renames at the end, so
 * a cancelled or failed write leaves no file.
 */
export async function writeCheckpoint(
  path: string,
  input: {
    memoryBytes: number;
    readBlock: (index: number, into: Buffer) => Promise<number>;
    metadata: CheckpointMetadata;
    deviceState: Buffer;
    stagingBytes?: number;
    signal?: AbortSignal;
    onProgress?: (p: WriteProgress) => void;
  },
): Promise<{ fileBytes: number; storedPages: number; blockCount: number }> {
  const blockCount = Math.ceil(input.memoryBytes / BLOCK_BYTES);
  const partial = `${path}.partial`;
  const file = await open(partial, 'w', 0o600);
  const staging = Buffer.alloc(Math.max(input.stagingBytes ?? 8 * 1024 * 1024, BLOCK_BYTES + 1024));
  let staged = 0;
  let fileOffset = HEADER_BYTES;
  let written = HEADER_BYTES;
  const flush = async () => {
    if (staged > 0) await file.write(staging, 0, staged, written);
    written += staged;
    staged = 0;
  };
  try {
    const index: IndexEntry[] = [];
    const block = Buffer.alloc(BLOCK_BYTES);
    const pages = Buffer.alloc(BLOCK_BYTES);
    let storedPages = 0;
    for (let i = 0; i < blockCount; i++) {
      input.signal?.throwIfAborted();
      block.fill(0);
      const length = await input.readBlock(i, block);
      const bitmap = Buffer.alloc(PAGES_PER_BLOCK / 8);
      let count = 0;
      for (let p = 0; p * PAGE_BYTES < length; p++) {
        if (isZeroPage(block, p * PAGE_BYTES)) continue;
        bitmap[p >> 3] = (bitmap[p >> 3] as number) | (1 << (p & 7));
        block.copy(pages, count * PAGE_BYTES, p * PAGE_BYTES, (p + 1) * PAGE_BYTES);
        count++;
      }
      if (count === 0) {
        index.push({ fileOffset, storedBytes: 0, pageCount: 0, bitmap, hash: 0n });
        continue;
      }
      const stored = compressSync(pages.subarray(0, count * PAGE_BYTES));
      if (staged + stored.length > staging.length) await flush();
      if (stored.length > staging.length) {
        await file.write(stored, 0, stored.length, written);
        written += stored.length;
      } else {
        stored.copy(staging, staged);
        staged += stored.length;
      }
      index.push({ fileOffset, storedBytes: stored.length, pageCount: count, bitmap, hash: hash(stored) });
      fileOffset += stored.length;
      storedPages += count;
      input.onProgress?.({ blocksDone: i + 1, blockCount, bytesWritten: fileOffset });
    }
    await flush();

    const meta = Buffer.from(JSON.stringify(input.metadata), 'utf8');
    const toc = Buffer.alloc(TOC_FIXED_BYTES + meta.length + input.deviceState.length + index.length * INDEX_ENTRY_BYTES + 8);
    let o = 0;
    o = toc.writeUInt32LE(meta.length, o);
    o = toc.writeUInt32LE(input.deviceState.length, o);
    o = toc.writeBigUInt64LE(hash(meta), o);
    o = toc.writeBigUInt64LE(hash(input.deviceState), o);
    o += meta.copy(toc, o);
    o += input.deviceState.copy(toc, o);
    for (const e of index) {
      o = toc.writeBigUInt64LE(BigInt(e.fileOffset), o);
      o = toc.writeUInt32LE(e.storedBytes, o);
      o = toc.writeUInt32LE(e.pageCount, o);
      o += e.bitmap.copy(toc, o);
      o = toc.writeBigUInt64LE(e.hash, o);
    }
    toc.writeBigUInt64LE(hash(toc.subarray(0, o)), o);
    await file.write(toc, 0, toc.length, fileOffset);

    const header = Buffer.alloc(HEADER_BYTES);
    header.write(CHECKPOINT_MAGIC, 0, 'ascii');
    header.writeUInt32LE(CHECKPOINT_VERSION, 8);
    header.writeUInt32LE(HEADER_BYTES, 12);
    header.writeUInt32LE(BLOCK_BYTES, 16);
    header.writeUInt32LE(PAGE_BYTES, 20);
    header.writeBigUInt64LE(BigInt(input.memoryBytes), 24);
    header.writeUInt32LE(blockCount, 32);
    header.writeBigUInt64LE(BigInt(fileOffset), 40);
    header.writeUInt32LE(toc.length, 48);
    header.writeBigUInt64LE(hash(header.subarray(0, 56)), 56);
    await file.write(header, 0, HEADER_BYTES, 0);
    await file.sync();
    await file.close();
    await rename(partial, path);
    return { fileBytes: fileOffset + toc.length, storedPages, blockCount };
  } catch (err) {
    await file.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
}

/** A validated checkpoint file: metadata, device state and the block index are read and checked at open. */
export class CheckpointReader {
  private constructor(
    readonly path: string,
    private readonly file: FileHandle,
    readonly memoryBytes: number,
    readonly metadata: CheckpointMetadata,
    readonly deviceState: Buffer,
    private readonly index: IndexEntry[],
  ) {}

  get blockCount(): number {
    return this.index.length;
  }

  /** Pages stored (non-zero) in the whole file. */
  get storedPages(): number {
    return this.index.reduce((n, e) => n + e.pageCount, 0);
  }

  static async open(path: string): Promise<CheckpointReader> {
    const file = await open(path, 'r').catch((err: NodeJS.ErrnoException) => {
      throw new CheckpointFormatError(path, 'file', `cannot open (${err.code ?? err.message})`, 'CHECKPOINT_NOT_FOUND');
    });
    try {
      const size = (await file.stat()).size;
      const fail = (part: CheckpointPart, reason: string, code?: string): never => {
        throw new CheckpointFormatError(path, part, reason, code);
      };
      if (size < HEADER_BYTES) fail('header', `file is ${size} bytes, shorter than the header`);
      const header = Buffer.alloc(HEADER_BYTES);
      await file.read(header, 0, HEADER_BYTES, 0);
      if (header.toString('ascii', 0, 8) !== CHECKPOINT_MAGIC) fail('header', 'not an Offshoot checkpoint (bad magic)');
      const version = header.readUInt32LE(8);
      if (version !== CHECKPOINT_VERSION) fail('header', `version ${version}; this Offshoot reads version ${CHECKPOINT_VERSION}`, 'CHECKPOINT_VERSION');
      if (header.readBigUInt64LE(56) !== hash(header.subarray(0, 56))) fail('header', 'checksum mismatch');
      if (header.readUInt32LE(12) !== HEADER_BYTES || header.readUInt32LE(16) !== BLOCK_BYTES || header.readUInt32LE(20) !== PAGE_BYTES) fail('header', 'unsupported header, block or page size');
      const memoryBytes = Number(header.readBigUInt64LE(24));
      const blockCount = header.readUInt32LE(32);
      const tocOffset = Number(header.readBigUInt64LE(40));
      const tocBytes = header.readUInt32LE(48);
      if (memoryBytes <= 0 || memoryBytes > LIMITS.memoryBytes) fail('header', `guest memory size ${memoryBytes} out of range`);
      if (blockCount !== Math.ceil(memoryBytes / BLOCK_BYTES)) fail('header', `block count ${blockCount} does not match memory size`);
      if (tocOffset < HEADER_BYTES || tocOffset + tocBytes !== size) fail('table of contents', `expected to end the file at ${tocOffset + tocBytes}, the file has ${size} bytes (truncated?)`);
      const maxToc = TOC_FIXED_BYTES + LIMITS.metadataBytes + LIMITS.deviceStateBytes + blockCount * INDEX_ENTRY_BYTES + 8;
      if (tocBytes > maxToc) fail('table of contents', `size ${tocBytes} past the limit`);

      const toc = Buffer.alloc(tocBytes);
      await file.read(toc, 0, tocBytes, tocOffset);
      if (toc.readBigUInt64LE(tocBytes - 8) !== hash(toc.subarray(0, tocBytes - 8))) fail('table of contents', 'checksum mismatch');
      const metaBytes = toc.readUInt32LE(0);
      const deviceBytes = toc.readUInt32LE(4);
      if (metaBytes > LIMITS.metadataBytes) fail('metadata', `size ${metaBytes} past the limit`);
      if (deviceBytes > LIMITS.deviceStateBytes) fail('device state', `size ${deviceBytes} past the limit`);
      if (TOC_FIXED_BYTES + metaBytes + deviceBytes + blockCount * INDEX_ENTRY_BYTES + 8 !== tocBytes) fail('index', 'sizes in the table of contents do not add up');
      const meta = toc.subarray(TOC_FIXED_BYTES, TOC_FIXED_BYTES + metaBytes);
      const device = Buffer.from(toc.subarray(TOC_FIXED_BYTES + metaBytes, TOC_FIXED_BYTES + metaBytes + deviceBytes));
      if (hash(meta) !== toc.readBigUInt64LE(8)) fail('metadata', 'checksum mismatch');
      if (hash(device) !== toc.readBigUInt64LE(16)) fail('device state', 'checksum mismatch');
      let metadata: CheckpointMetadata = {};
      try {
        metadata = JSON.parse(meta.toString('utf8')) as CheckpointMetadata;
      } catch (err) {
        fail('metadata', `not JSON (${(err as Error).message})`);
      }
      const index: IndexEntry[] = [];
      let o = TOC_FIXED_BYTES + metaBytes + deviceBytes;
      let expected = HEADER_BYTES;
      for (let i = 0; i < blockCount; i++, o += INDEX_ENTRY_BYTES) {
        const entry: IndexEntry = { fileOffset: Number(toc.readBigUInt64LE(o)), storedBytes: toc.readUInt32LE(o + 8), pageCount: toc.readUInt32LE(o + 12), bitmap: Buffer.from(toc.subarray(o + 16, o + 48)), hash: toc.readBigUInt64LE(o + 48) };
        let bits = 0;
        for (const byte of entry.bitmap) for (let b = byte; b; b &= b - 1) bits++;
        if (entry.fileOffset !== expected || entry.pageCount !== bits || entry.pageCount > PAGES_PER_BLOCK || (entry.pageCount === 0) !== (entry.storedBytes === 0)) fail('index', `entry ${i} is inconsistent`);
        expected += entry.storedBytes;
        index.push(entry);
      }
      if (expected !== tocOffset) fail('index', 'blocks do not fill the space before the table of contents');
      return new CheckpointReader(path, file, memoryBytes, metadata, device, index);
    } catch (err) {
      await file.close();
      throw err;
    }
  }

  /** Which pages of block `i` are stored (non-zero): bit p (byte p >> 3, bit p & 7) of a 32-byte bitmap. */
  blockBitmap(i: number): Buffer {
    const entry = this.index[i];
    if (!entry) throw new CheckpointFormatError(this.path, 'index', `no block ${i}`);
    return entry.bitmap;
  }

  /** Which storage block holds guest physical offset `offset`. */
  blockOf(offset: number): number {
    return Math.floor(offset / BLOCK_BYTES);
  }

  /** Decompresses block `i` into `into` (BLOCK_BYTES, zero-filled where pages were zero); verifies its checksum. */
  async readBlock(i: number, into: Buffer): Promise<void> {
    const entry = this.index[i];
    if (!entry) throw new CheckpointFormatError(this.path, 'index', `no block ${i}`);
    into.fill(0, 0, BLOCK_BYTES);
    if (entry.pageCount === 0) return;
    const stored = Buffer.alloc(entry.storedBytes);
    const { bytesRead } = await this.file.read(stored, 0, entry.storedBytes, entry.fileOffset);
    const part: CheckpointPart = `block ${i}`;
    if (bytesRead !== entry.storedBytes) throw new CheckpointFormatError(this.path, part, 'truncated');
    if (hash(stored) !== entry.hash) throw new CheckpointFormatError(this.path, part, 'checksum mismatch');
    let pages: Buffer;
    try {
      pages = uncompressSync(stored);
    } catch (err) {
      throw new CheckpointFormatError(this.path, part, `cannot decompress (${(err as Error).message})`);
    }
    if (pages.length !== entry.pageCount * PAGE_BYTES) throw new CheckpointFormatError(this.path, part, `decompressed to ${pages.length} bytes, expected ${entry.pageCount * PAGE_BYTES}`);
    let n = 0;
    for (let p = 0; p < PAGES_PER_BLOCK; p++) {
      if (((entry.bitmap[p >> 3] as number) & (1 << (p & 7))) === 0) continue;
      pages.copy(into, p * PAGE_BYTES, n * PAGE_BYTES, (n + 1) * PAGE_BYTES);
      n++;
    }
  }

  /** Eager restore: every block written into `target` (a new guest RAM file) at its guest offset; zero pages skipped (sparse). */
  async restoreInto(target: string, onProgress?: (blocksDone: number, blockCount: number) => void): Promise<void> {
    const out = await open(target, 'w', 0o600);
    try {
      await out.truncate(this.memoryBytes);
      const buf = Buffer.alloc(BLOCK_BYTES);
      for (let i = 0; i < this.index.length; i++) {
        const entry = this.index[i] as IndexEntry;
        if (entry.pageCount === 0) continue;
        await this.readBlock(i, buf);
        const length = Math.min(BLOCK_BYTES, this.memoryBytes - i * BLOCK_BYTES);
        await out.write(buf, 0, length, i * BLOCK_BYTES);
        onProgress?.(i + 1, this.index.length);
      }
    } finally {
      await out.close();
    }
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
