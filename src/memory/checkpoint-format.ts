// Offshoot's checkpoint file: guest memory in fixed-size storage blocks
// (1 MiB of guest pages each), each block holding only its non-zero pages,
// compressed with LZ4 or, when they do not compress, stored raw, and
// checksummed (xxh64); the metadata (VM spec, disk references), QEMU's device
// state and an index from guest address to block follow in a table of
// contents. With the native addon (native/mmap.c) a block's zero-page scan,
// the packing of its stored pages into a buffer of the writer and their
// checksum run in libuv's thread pool (readPackBlock, reading guest RAM
// itself, or packBlock), so that the event loop's thread only hands blocks
// on: on a loaded machine that thread waits for a core after each piece of
// work (bench checkpoint --busy 2, 1 GiB: ~1.2 s of run-queue wait for
// ~0.64 s of work when it scanned, hashed and copied every block itself).
// Without the addon, a JavaScript loop does it here. Stored blocks go to a
// sink (checkpoint-sink.ts) while the next blocks are read ahead and
// compressed: with O_DIRECT in 8 MiB aligned writes where the file system
// allows it (a disk: no page cache to fill and little left for the fsync;
// not tmpfs, whose page cache is the file), else in batches of up to 8 MiB,
// one writev each straight from the buffers they were packed into. (writev
// straight from a read-only mapping of guest RAM was tried and was slower in
// the daemon; the buffers are the writer's own.) The file's bytes are the
// same either way.
// The reader is strict: a wrong magic or version, a size past a limit,
// a truncated file, an inconsistent index entry or a checksum mismatch is a
// CheckpointFormatError naming the part, never garbage.
//
// Version 1.1 (1.0 differs only where marked), integers little-endian:
//
//   0 +--------------------------------------------------------------+
//     | header (64 bytes)                                             |
//     |  0 magic "OFFSHCK1"        8 | 24 memoryBytes   u64          |
//     |  8 version u32 (see below)   | 32 blockCount    u32          |
//     | 12 headerBytes u32 (=64)     | 36 reserved      u32          |
//     | 16 blockBytes u32 (1 MiB)    | 40 tocOffset     u64          |
//     | 20 pageBytes u32 (4096)      | 48 tocBytes u32, 52 reserved  |
//     |                              | 56 xxh64 of bytes 0..55       |
//  64 +--------------------------------------------------------------+
//     | storage blocks, back to back: a block's non-zero pages, in    |
//     | page order, LZ4-compressed (a u32 LE of the raw size, then an |
//     | LZ4 block) or raw (1.1 only); an all-zero block stores nothing|
//     +--------------------------------------------------------------+
//     | table of contents (tocBytes)                                  |
//     |  metaBytes u32 | deviceBytes u32 | metaHash u64 | devHash u64 |
//     |  metadata (JSON, metaBytes)                                   |
//     |  device state (QEMU migration stream, deviceBytes)            |
//     |  index, blockCount entries of 56 bytes:                       |
//     |    fileOffset u64 | storedBytes u32 | pageCount u16 |         |
//     |    encoding u8 (0 LZ4, 1 raw) | reserved u8 (0) |             |
//     |    page bitmap (32 bytes, bit i = page i stored) | xxh64 u64  |
//     |  xxh64 of the table of contents above                         |
//     +--------------------------------------------------------------+  end of file
//
// Versions and compatibility. The version u32 is major (low 16 bits) and
// minor (high 16 bits). A reader reads its own major at any minor up to its
// own, and refuses anything else with CHECKPOINT_VERSION; a writer writes the
// newest minor. 1.0 (u32 1): every stored block is LZ4 and the 4 bytes after
// storedBytes are a u32 pageCount (so bytes 14-15 of an entry are zero,
// encoding 0). 1.1 (u32 0x00010001) adds raw blocks: encoding 1, storedBytes
// = pageCount x 4096; an LZ4 block of 1.1 is always smaller than its raw
// pages (the writer stores raw otherwise). A 1.0 reader refuses 1.1 files
// (its version check is exact), as it cannot read raw blocks.
import { constants } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { xxh64 } from '@node-rs/xxhash';
import { compress, compressSync, uncompress } from 'lz4-napi';
import { OffshootError, onTmpfs, openDirect, writeAllAt } from '../common/index.ts';
import { batchSink, directSink } from './checkpoint-sink.ts';
import { mmapAddonOrNull } from './native-mmap.ts';

export const CHECKPOINT_MAGIC = 'OFFSHCK1';
/** Major version this code reads and writes (low 16 bits of the header's version). */
export const CHECKPOINT_MAJOR = 1;
/** Newest minor version (high 16 bits): 1 adds raw blocks. */
export const CHECKPOINT_MINOR = 1;
/** The version u32 this code writes: 1.1. */
export const CHECKPOINT_VERSION = CHECKPOINT_MAJOR | (CHECKPOINT_MINOR << 16);
export const HEADER_BYTES = 64;
export const PAGE_BYTES = 4096;
export const PAGES_PER_BLOCK = 256;
export const BLOCK_BYTES = PAGE_BYTES * PAGES_PER_BLOCK;
const INDEX_ENTRY_BYTES = 56;
const TOC_FIXED_BYTES = 24;

/** How a block's stored pages are encoded (index entry byte 14). */
export const BLOCK_ENCODING = { lz4: 0, raw: 1 } as const;
export type BlockEncoding = keyof typeof BLOCK_ENCODING;

/** Limits the reader enforces before trusting any size in a file. */
export const LIMITS = {
  memoryBytes: 1024 ** 4,
  metadataBytes: 16 * 1024 * 1024,
  deviceStateBytes: 256 * 1024 * 1024,
};

/** "1.1" for a version u32. */
export function formatVersion(version: number): string {
  return `${version & 0xffff}.${version >>> 16}`;
}

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
  encoding: BlockEncoding;
  bitmap: Buffer;
  hash: bigint;
}

function hash(data: Uint8Array): bigint {
  return xxh64(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
}

const ZERO_PAGE = Buffer.alloc(PAGE_BYTES);

/** The native addon's page scan, or null (then a JavaScript loop of native compares does it). */
let nativeScan: ((bytes: Uint8Array, known: Uint8Array | null, bitmap: Uint8Array) => number) | null | undefined;

/**
 * Sets bit p of `bitmap` (32 bytes, zero) for each page p of `bytes` (whole pages, at most a block) that
 * is not all zero and not marked in `known` (pages never read), and returns how many there are. One call
 * into the native addon (native/mmap.c) when it is built; else one compare against a zero page each.
 */
export function scanPages(bytes: Buffer, known: Uint8Array | undefined, bitmap: Buffer, native = true): number {
  if (nativeScan === undefined) {
    const addon = mmapAddonOrNull();
    nativeScan = addon ? addon.scanPages.bind(addon) : null;
  }
  if (native && nativeScan) return nativeScan(bytes, known ?? null, bitmap);
  let count = 0;
  for (let p = 0; p < bytes.length / PAGE_BYTES; p++) {
    if ((known && bit(known, p)) || bytes.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES).equals(ZERO_PAGE)) continue;
    bitmap[p >> 3] = (bitmap[p >> 3] as number) | (1 << (p & 7));
    count++;
  }
  return count;
}

/**
 * A sample of the block (its first stored page) is compressed first: if that saves less than this
 * fraction, the block is stored raw without compressing the rest. LZ4 is slowest on data it compresses
 * least: on the guest RAM of bench checkpoint (256 MiB and 1 GiB guests), blocks whose sample saved
 * 1/16 to 1/2 took ~45 % of the compression time (~107 of 238 ms, 146 of 294 ms of one core) to save
 * ~25 % of what compression saves (11 of 40 MiB, 14 of 51 MiB): they are stored raw.
 */
const SAMPLE_MIN_SAVING = 1 / 2;

/**
 * The stored form of a block's packed non-zero pages: LZ4 when that is smaller, raw otherwise. The
 * sample is compressed here; the block itself in libuv's thread pool (lz4-napi runs at ~0.1-0.2 GB/s
 * here, so compressing on the main thread would hold the daemon's event loop and leave the second
 * core idle).
 */
async function encodeBlock(pages: Buffer, rawHash?: bigint): Promise<{ encoding: BlockEncoding; stored: Buffer; hash: bigint }> {
  const raw = () => ({ encoding: 'raw' as const, stored: pages, hash: rawHash ?? hash(pages) });
  const sample = compressSync(pages.subarray(0, PAGE_BYTES));
  if (sample.length > PAGE_BYTES * (1 - SAMPLE_MIN_SAVING)) return raw();
  const compressed = await compress(pages);
  return compressed.length < pages.length ? { encoding: 'lz4', stored: compressed, hash: hash(compressed) } : raw();
}

/** A block ready to be staged: its page bitmap, stored page count, and stored bytes with their checksum. */
interface EncodedBlock {
  bitmap: Buffer;
  count: number;
  encoding: BlockEncoding;
  stored: Buffer;
  hash: bigint;
}

/** The native addon's packBlock (scan, pack and checksum in the thread pool), or null. */
let nativePack: ((bytes: Uint8Array, known: Uint8Array | null, into: Uint8Array, bitmap: Uint8Array) => Promise<[number, bigint]>) | null | undefined;

/**
 * Finds, packs and encodes one block (see packBlock and encodeBlock). With the native addon, the scan,
 * the packing into `into` and the checksum of the packed pages run in libuv's thread pool, not on the
 * event loop's thread; without it (or for a short last page), packBlock does them here.
 */
async function packAndEncode({ bytes, zeroPages, packed }: MemoryBlock, into: Buffer, native = true): Promise<EncodedBlock> {
  if (packed) return encodePacked(packed.bitmap, packed.count, bytes, packed.hash);
  if (nativePack === undefined) {
    const addon = mmapAddonOrNull();
    nativePack = addon ? addon.packBlock.bind(addon) : null;
  }
  const length = Math.min(bytes.length, BLOCK_BYTES);
  if (native && nativePack && length % PAGE_BYTES === 0) {
    const bitmap = Buffer.alloc(PAGES_PER_BLOCK / 8);
    const [count, packedHash] = await nativePack(bytes.subarray(0, length), zeroPages ?? null, into, bitmap);
    return encodePacked(bitmap, count, into, packedHash);
  }
  const { bitmap, count, pages } = packBlock(bytes, zeroPages, into);
  return encodePacked(bitmap, count, pages);
}

/** A packed block's encoding: its `count` stored pages at the start of `pages` (none: a zero block, nothing stored). */
async function encodePacked(bitmap: Buffer, count: number, pages: Buffer, packedHash?: bigint): Promise<EncodedBlock> {
  if (count === 0) return { bitmap, count, encoding: 'lz4', stored: EMPTY, hash: 0n };
  return { bitmap, count, ...(await encodeBlock(pages.subarray(0, count * PAGE_BYTES), packedHash)) };
}

const EMPTY = Buffer.alloc(0);

export interface WriteProgress {
  blocksDone: number;
  blockCount: number;
  bytesWritten: number;
}

/**
 * Where a write spent its time (ms): blocked on reads of guest RAM (with the 'packed' read path: the
 * read, scan, packing and checksum in the thread pool), on the rest of a block's encoding (thread pool:
 * packBlock, LZ4), on file writes, in the final fsync + rename; the rest of totalMs is the main thread's
 * own work.
 */
export interface WriteTimings {
  totalMs: number;
  readWaitMs: number;
  encodeWaitMs: number;
  writeWaitMs: number;
  syncMs: number;
  rawBlocks: number;
  lz4Blocks: number;
  zeroBlocks: number;
  /** Whether the stored bytes were written with O_DIRECT (checkpoint-sink.ts). */
  direct?: boolean;
  /** How guest RAM was read (set by the caller that chose it; see guest-memory.ts). */
  readPath?: 'packed' | 'mmap' | 'pread';
}

/** The writer reports its progress at most this often (and once more at the end). */
const PROGRESS_EVERY_MS = 100;

/** Whether bit p of a page bitmap is set. */
function bit(bitmap: Uint8Array, p: number): boolean {
  return (((bitmap[p >> 3] as number) >> (p & 7)) & 1) === 1;
}

/**
 * Finds a block's non-zero pages (scanPages; pages in `zeroPages` are not read) and returns its bitmap
 * and those pages packed in page order: `bytes` itself when every page of a whole block is stored (no
 * copy), else packed into `into` (`bytes` may be a view of it; a short last page counts as zero-padded).
 */
function packBlock(bytes: Buffer, zeroPages: Uint8Array | undefined, into: Buffer): { bitmap: Buffer; count: number; pages: Buffer } {
  const bitmap = Buffer.alloc(PAGES_PER_BLOCK / 8);
  let length = Math.min(bytes.length, BLOCK_BYTES);
  const inInto = bytes.buffer === into.buffer && bytes.byteOffset === into.byteOffset;
  if (length % PAGE_BYTES !== 0) {
    // A short last page: zero-padded in the writer's own buffer.
    if (!inInto) bytes.copy(into, 0, 0, length);
    const padded = Math.ceil(length / PAGE_BYTES) * PAGE_BYTES;
    into.fill(0, length, padded);
    return packBlock(into.subarray(0, padded), zeroPages, into);
  }
  const pageCount = length / PAGE_BYTES;
  const count = scanPages(bytes.subarray(0, length), zeroPages, bitmap);
  if (count === pageCount) return { bitmap, count, pages: bytes.subarray(0, length) };
  // Runs of stored pages, in page order, moved to the front of `into` (never over a page not yet moved).
  forEachRun(bitmap, (first, n, packedAt) => {
    if (!inInto || packedAt !== first) bytes.copy(into, packedAt * PAGE_BYTES, first * PAGE_BYTES, (first + n) * PAGE_BYTES);
  });
  length = count * PAGE_BYTES;
  return { bitmap, count, pages: into.subarray(0, length) };
}

/** Blocks read ahead of the one being encoded. */
const READ_AHEAD = 4;

/**
 * One block of guest RAM as a GuestMemory hands it to the writer: `bytes` (BLOCK_BYTES, or fewer for
 * the last block or past the end of a short file: the rest is zero) is either a view of the buffer the
 * writer passed in (read into it) or of memory the source owns (a read-only mapping of the RAM file),
 * which the writer never writes to. `zeroPages` (optional, 32 bytes, bit p = page p) marks pages known
 * to be zero without reading them (holes in the file): the writer never touches those bytes (reading a
 * hole of a tmpfs file through a mapping would allocate a page for it).
 */
export interface MemoryBlock {
  bytes: Buffer;
  zeroPages?: Uint8Array;
  /**
   * Set when the source packed the block itself (readPackBlock): `bytes` are then its `count` stored
   * pages, packed in page order in the writer's buffer, `bitmap` says which they are and `hash` is
   * their XXH64.
   */
  packed?: { bitmap: Buffer; count: number; hash: bigint };
}

/** Guest RAM as the checkpoint writer reads it. */
export interface GuestMemory {
  /** Block `i`, read into `into` (BLOCK_BYTES, the writer's) or a view of the source's own memory. */
  block(i: number, into: Buffer): Promise<MemoryBlock>;
  /** The writer no longer reads blocks 0..i: their encodings have finished and their bytes are in its own buffers. */
  release?(i: number): void;
}

/**
 * Writes a checkpoint: memory blocks from `memory` (or `readBlock`: each BLOCK_BYTES of guest RAM read
 * into the buffer given, the last one possibly shorter; either is called for up to READ_AHEAD blocks at
 * once, each with its own buffer), then the table of contents. Writes to PATH.partial and renames at
 * the end (after an fsync), so a cancelled or failed write leaves no file. The file depends only on
 * the bytes of guest RAM, never on how they were read. Every encoding of a block has finished when the
 * writer returns or throws, so the caller may then unmap memory the blocks were views of.
 */
export async function writeCheckpoint(
  path: string,
  input: {
    memoryBytes: number;
    memory?: GuestMemory;
    readBlock?: (index: number, into: Buffer) => Promise<number>;
    metadata: CheckpointMetadata;
    deviceState: Buffer;
    /** Bytes per write at most (one writev of a batch of blocks; default 8 MiB), and so stagingBytes / 1 MiB blocks per batch. */
    stagingBytes?: number;
    signal?: AbortSignal;
    onProgress?: (p: WriteProgress) => void;
    /** Write with O_DIRECT where the file system allows it (see checkpoint-sink.ts). Default true. */
    direct?: boolean;
    /** false: blocks are scanned, packed and hashed on this thread even when the native addon is built (tests). */
    nativePack?: boolean;
  },
): Promise<{ fileBytes: number; storedPages: number; blockCount: number; timings: WriteTimings }> {
  const blockCount = Math.ceil(input.memoryBytes / BLOCK_BYTES);
  const readBlock = input.readBlock;
  const memory: GuestMemory | undefined = input.memory ?? (readBlock && { block: async (i, into) => ({ bytes: into.subarray(0, Math.min(await readBlock(i, into), BLOCK_BYTES)) }) });
  if (!memory) throw new TypeError('writeCheckpoint: give memory or readBlock');
  const started = performance.now();
  const timings: WriteTimings = { totalMs: 0, readWaitMs: 0, encodeWaitMs: 0, writeWaitMs: 0, syncMs: 0, rawBlocks: 0, lz4Blocks: 0, zeroBlocks: 0 };
  const waited = async <T>(key: 'readWaitMs' | 'encodeWaitMs' | 'writeWaitMs', p: Promise<T>): Promise<T> => {
    const t = performance.now();
    try {
      return await p;
    } finally {
      timings[key] += performance.now() - t;
    }
  };
  const partial = `${path}.partial`;
  const file = await open(partial, 'w', 0o600);
  const wantDirect = (input.direct ?? true) && !(await onTmpfs(partial).catch(() => false));
  const direct = await openDirect(partial, constants.O_WRONLY, wantDirect).catch(async (err: unknown) => {
    await file.close();
    await rm(partial, { force: true });
    throw err;
  });
  timings.direct = direct !== undefined;
  // Stored bytes go to a sink (checkpoint-sink.ts): O_DIRECT through page-aligned staging buffers where
  // the file system allows it and is not tmpfs (whose page cache is the file), else batches of up to
  // stagingBytes and batchBlocks block buffers, one writev each straight from the buffers they were
  // packed into (in the thread pool). Either way the next bytes gather while the last ones are written.
  const stagingBytes = Math.max(input.stagingBytes ?? 8 * 1024 * 1024, BLOCK_BYTES + 1024);
  const batchBlocks = Math.max(1, Math.floor(stagingBytes / BLOCK_BYTES));
  const free: Buffer[] = [];
  const sinkOptions = { file, start: HEADER_BYTES, stagingBytes, release: (buf: Buffer) => void free.push(buf), waited: <T>(p: Promise<T>) => waited('writeWaitMs', p) };
  const sink = direct ? directSink(sinkOptions, direct) : batchSink(sinkOptions, batchBlocks);
  const reads: Array<Promise<MemoryBlock> | undefined> = new Array(READ_AHEAD);
  const blockBufs: Buffer[] = new Array(READ_AHEAD);
  const startRead = (i: number) => {
    if (i >= blockCount) return;
    const buf = free.pop() ?? Buffer.allocUnsafeSlow(BLOCK_BYTES);
    blockBufs[i % READ_AHEAD] = buf;
    reads[i % READ_AHEAD] = memory.block(i, buf);
  };
  // Blocks read and packed, in order, waiting for their encoding (in the thread pool) to be staged.
  const pending: Array<{ i: number; encoded: Promise<EncodedBlock> }> = [];
  try {
    const index: IndexEntry[] = [];
    let fileOffset = HEADER_BYTES;
    let storedPages = 0;
    // Progress at most every PROGRESS_EVERY_MS and at the last block: each report travels to the controller
    // (an operation event, a poll, two validations), and one per 1 MiB block cost the daemon measurable time.
    let reportedAt = -Infinity;
    const report = (blocksDone: number) => {
      const now = performance.now();
      if (blocksDone < blockCount && now - reportedAt < PROGRESS_EVERY_MS) return;
      reportedAt = now;
      input.onProgress?.({ blocksDone, blockCount, bytesWritten: fileOffset });
    };
    /**
     * Adds the oldest pending block to the batch (its raw pages stay in its block buffer until the batch is
     * written; a buffer whose block is zero or compressed is free at once); the block READ_AHEAD further
     * on is then read.
     */
    const drain = async () => {
      const { i, encoded } = pending[0] as (typeof pending)[number];
      const buf = blockBufs[i % READ_AHEAD] as Buffer;
      const { bitmap, count, encoding, stored, hash: storedHash } = await waited('encodeWaitMs', encoded);
      if (count === 0) {
        index.push({ fileOffset, storedBytes: 0, pageCount: 0, encoding: 'lz4', bitmap, hash: 0n });
        timings.zeroBlocks++;
        free.push(buf);
      } else {
        timings[encoding === 'raw' ? 'rawBlocks' : 'lz4Blocks']++;
        let part = stored;
        if (!sink.copiesParts && encoding === 'raw' && stored.buffer !== buf.buffer) {
          // Raw pages that are a view of the source's memory (a whole block packed on this thread):
          // copied, so that the source may let them go (release) before the batch is written.
          part = buf.subarray(0, stored.copy(buf));
        }
        await sink.append(part, buf);
        index.push({ fileOffset, storedBytes: stored.length, pageCount: count, encoding, bitmap, hash: storedHash });
        fileOffset += stored.length;
        storedPages += count;
        report(i + 1);
      }
      if (count === 0) report(i + 1);
      pending.shift();
      memory.release?.(i);
      startRead(i + READ_AHEAD);
    };
    for (let i = 0; i < READ_AHEAD; i++) startRead(i);
    for (let i = 0; i < blockCount; i++) {
      input.signal?.throwIfAborted();
      while (pending.length > 0 && (pending[0] as (typeof pending)[number]).i <= i - READ_AHEAD) await drain();
      const into = blockBufs[i % READ_AHEAD] as Buffer;
      const block = await waited('readWaitMs', reads[i % READ_AHEAD] as Promise<MemoryBlock>);
      reads[i % READ_AHEAD] = undefined;
      const encoded = packAndEncode(block, into, input.nativePack ?? true);
      encoded.catch(() => undefined); // surfaces when drained
      pending.push({ i, encoded });
    }
    while (pending.length > 0) await drain();
    await sink.end();
    if (sink.position !== fileOffset) throw new Error(`checkpoint writer: stored bytes end at ${sink.position}, the index at ${fileOffset}`);

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
      o = toc.writeUInt16LE(e.pageCount, o);
      o = toc.writeUInt8(BLOCK_ENCODING[e.encoding], o);
      o = toc.writeUInt8(0, o);
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
    const syncing = performance.now();
    await file.sync();
    await direct?.close();
    await file.close();
    await rename(partial, path);
    timings.syncMs = performance.now() - syncing;
    timings.totalMs = performance.now() - started;
    return { fileBytes: fileOffset + toc.length, storedPages, blockCount, timings };
  } catch (err) {
    // Never leave reads, encodings or writes running on the file, the buffers or the caller's handles.
    await Promise.allSettled([...reads, sink.settle(), ...pending.map((p) => p.encoded)]);
    await direct?.close().catch(() => undefined);
    await file.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw err;
  }
}

/** Blocks an eager restore reads and writes at once. */
const RESTORE_LANES = 4;

/**
 * Calls `stored(first, count, packedAt)` for each run of consecutive stored pages of a block bitmap
 * (`packedAt`: index of the run's first page among the stored pages), and `zero(first, count)` for
 * each run of zero pages.
 */
export function forEachRun(bitmap: Uint8Array, stored: (first: number, count: number, packedAt: number) => void, zero?: (first: number, count: number) => void): void {
  let packed = 0;
  let p = 0;
  while (p < PAGES_PER_BLOCK) {
    const bit = ((bitmap[p >> 3] as number) >> (p & 7)) & 1;
    let q = p + 1;
    while (q < PAGES_PER_BLOCK && (((bitmap[q >> 3] as number) >> (q & 7)) & 1) === bit) q++;
    if (bit) {
      stored(p, q - p, packed);
      packed += q - p;
    } else {
      zero?.(p, q - p);
    }
    p = q;
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
      const minor = version >>> 16;
      if ((version & 0xffff) !== CHECKPOINT_MAJOR || minor > CHECKPOINT_MINOR) {
        fail('header', `version ${formatVersion(version)}; this Offshoot reads versions ${CHECKPOINT_MAJOR}.0 to ${formatVersion(CHECKPOINT_VERSION)}`, 'CHECKPOINT_VERSION');
      }
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
        const code = toc.readUInt8(o + 14);
        const encoding: BlockEncoding | undefined = code === BLOCK_ENCODING.lz4 ? 'lz4' : code === BLOCK_ENCODING.raw && minor >= 1 ? 'raw' : undefined;
        if (encoding === undefined || toc.readUInt8(o + 15) !== 0) fail('index', `entry ${i} has an unknown block encoding ${code}`);
        const entry: IndexEntry = { fileOffset: Number(toc.readBigUInt64LE(o)), storedBytes: toc.readUInt32LE(o + 8), pageCount: toc.readUInt16LE(o + 12), encoding: encoding as BlockEncoding, bitmap: Buffer.from(toc.subarray(o + 16, o + 48)), hash: toc.readBigUInt64LE(o + 48) };
        let bits = 0;
        for (const byte of entry.bitmap) for (let b = byte; b; b &= b - 1) bits++;
        if (entry.fileOffset !== expected || entry.pageCount !== bits || entry.pageCount > PAGES_PER_BLOCK || (entry.pageCount === 0) !== (entry.storedBytes === 0)) fail('index', `entry ${i} is inconsistent`);
        const rawBytes = entry.pageCount * PAGE_BYTES;
        // 1.1: a raw block is exactly its pages; an LZ4 block is smaller (1.0 files did not promise that).
        if (entry.pageCount > 0 && (entry.encoding === 'raw' ? entry.storedBytes !== rawBytes : minor >= 1 && entry.storedBytes >= rawBytes)) fail('index', `entry ${i}: ${entry.storedBytes} stored bytes do not fit a ${entry.encoding} block of ${entry.pageCount} pages`);
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

  /** The encoding and stored size of block `i` (pageCount 0: nothing stored). */
  blockInfo(i: number): { encoding: BlockEncoding; storedBytes: number; pageCount: number } {
    const entry = this.index[i];
    if (!entry) throw new CheckpointFormatError(this.path, 'index', `no block ${i}`);
    return { encoding: entry.encoding, storedBytes: entry.storedBytes, pageCount: entry.pageCount };
  }

  /**
   * Reads block `i`'s stored pages, verifies their checksum and decodes them: returns the block's
   * non-zero pages packed in page order (pageCount x 4096 bytes; see blockBitmap for where each goes).
   * `scratch` (at least BLOCK_BYTES + 64 KiB) is used for the read when given, so no memory is allocated
   * for a raw block; the result may be a view of it.
   */
  async readPackedPages(i: number, scratch?: Buffer): Promise<Buffer> {
    const entry = this.index[i];
    if (!entry) throw new CheckpointFormatError(this.path, 'index', `no block ${i}`);
    if (entry.pageCount === 0) return Buffer.alloc(0);
    const stored = scratch && scratch.length >= entry.storedBytes ? scratch.subarray(0, entry.storedBytes) : Buffer.allocUnsafe(entry.storedBytes);
    const part: CheckpointPart = `block ${i}`;
    let bytesRead = 0;
    while (bytesRead < entry.storedBytes) {
      const n = (await this.file.read(stored, bytesRead, entry.storedBytes - bytesRead, entry.fileOffset + bytesRead)).bytesRead;
      if (n === 0) throw new CheckpointFormatError(this.path, part, 'truncated');
      bytesRead += n;
    }
    if (hash(stored) !== entry.hash) throw new CheckpointFormatError(this.path, part, 'checksum mismatch');
    if (entry.encoding === 'raw') return stored;
    let pages: Buffer;
    try {
      pages = await uncompress(stored);
    } catch (err) {
      throw new CheckpointFormatError(this.path, part, `cannot decompress (${(err as Error).message})`);
    }
    if (pages.length !== entry.pageCount * PAGE_BYTES) throw new CheckpointFormatError(this.path, part, `decompressed to ${pages.length} bytes, expected ${entry.pageCount * PAGE_BYTES}`);
    return pages;
  }

  /** Decodes block `i` into `into` (BLOCK_BYTES, zero-filled where pages were zero); verifies its checksum. */
  async readBlock(i: number, into: Buffer, scratch?: Buffer): Promise<void> {
    const entry = this.index[i];
    if (!entry) throw new CheckpointFormatError(this.path, 'index', `no block ${i}`);
    if (entry.pageCount === 0) {
      into.fill(0, 0, BLOCK_BYTES);
      return;
    }
    const pages = await this.readPackedPages(i, scratch);
    if (entry.pageCount === PAGES_PER_BLOCK) {
      pages.copy(into, 0, 0, BLOCK_BYTES);
      return;
    }
    forEachRun(entry.bitmap, (first, count, packedAt) => {
      pages.copy(into, first * PAGE_BYTES, packedAt * PAGE_BYTES, (packedAt + count) * PAGE_BYTES);
    }, (first, count) => into.fill(0, first * PAGE_BYTES, (first + count) * PAGE_BYTES));
  }

  /**
   * Eager restore: every stored page written into `target` (a new guest RAM file) at its guest offset;
   * zero pages are not written (the file stays sparse). Several blocks are read and written at once.
   * `target` is a path (created, or truncated, to the memory size) or an open handle of a file the
   * caller created and sized (e.g. one a QEMU already maps while it starts).
   */
  async restoreInto(target: string | FileHandle, onProgress?: (blocksDone: number, blockCount: number) => void): Promise<void> {
    // A path is created (mode 0600) and sized here; a handle is the caller's, already sized, and stays open.
    const out = typeof target === 'string' ? await open(target, 'w', 0o600) : target;
    try {
      if (typeof target === 'string') await out.truncate(this.memoryBytes);
      let next = 0;
      let done = 0;
      let stopping = false;
      const lane = async () => {
        const scratch = Buffer.allocUnsafeSlow(BLOCK_BYTES + 64 * 1024);
        for (;;) {
          const i = next++;
          if (i >= this.index.length || stopping) return;
          const entry = this.index[i] as IndexEntry;
          if (entry.pageCount === 0) continue;
          const pages = await this.readPackedPages(i, scratch);
          const writes: Array<Promise<unknown>> = [];
          forEachRun(entry.bitmap, (first, count, packedAt) => {
            const at = i * BLOCK_BYTES + first * PAGE_BYTES;
            const length = Math.min(count * PAGE_BYTES, this.memoryBytes - at);
            writes.push(writeAllAt(out, pages.subarray(packedAt * PAGE_BYTES, packedAt * PAGE_BYTES + length), length, at));
          });
          await Promise.all(writes);
          onProgress?.(++done, this.index.length);
        }
      };
      const lanes = Array.from({ length: RESTORE_LANES }, () =>
        lane().catch((err: unknown) => {
          stopping = true; // the other lanes stop after their block in flight
          throw err;
        }),
      );
      const settled = await Promise.allSettled(lanes);
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) throw failed.reason;
    } finally {
      if (typeof target === 'string') await out.close();
    }
  }

  async close(): Promise<void> {
    await this.file.close();
  }
}
