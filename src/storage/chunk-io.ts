// Reads the pieces of one chunk with positional I/O, a few reads ahead into a
// small pool of buffers, hashes the chunk's logical bytes in order (holes as
// zeros) with xxh3-64, and optionally writes each data buffer to a target at
// the same offset (pipelined: the next reads run while earlier buffers are
// being written).
//
// A file may come with a second handle opened with O_DIRECT: pieces whose
// offset and length are multiples of DIRECT_ALIGN go through it (DMA from the
// buffer, no page cache), the others (a file's unaligned tail) through the
// ordinary handle. On this machine new page-cache pages are expensive (the
// host backs guest memory lazily and free pages are reported back to it, so a
// buffered write of a fresh 1 GiB file ran at 0.3-1 GB/s while rewriting it
// ran at 7 GB/s), and buffered writes also leave everything for fdatasync.
// Buffers are page aligned (a WebAssembly.Memory: V8 maps it with mmap) as
// O_DIRECT requires, and reused for the whole copy.
import type { FileHandle } from 'node:fs/promises';
import { xxh3 } from '@node-rs/xxhash';
import { DIRECT_ALIGN, alignedBuffers, writeAllAt } from '../common/index.ts';
import type { Piece } from './extents.ts';

/** A pool of equal-sized, page-aligned I/O buffers shared by the chunks of one copy. */
export class BufferPool {
  readonly size: number;
  private readonly free: Buffer[] = [];
  private readonly waiters: Array<(b: Buffer) => void> = [];
  constructor(count: number, size: number) {
    this.size = size;
    this.free.push(...alignedBuffers(count, size));
  }
  tryTake(): Buffer | undefined {
    return this.free.pop();
  }
  take(): Promise<Buffer> {
    const b = this.free.pop();
    return b ? Promise.resolve(b) : new Promise((resolve) => this.waiters.push(resolve));
  }
  give(b: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(b);
    else this.free.push(b);
  }
}

/** An open file, with an O_DIRECT handle of the same file for aligned pieces when the file system allows one. */
export interface ChunkFile {
  handle: FileHandle;
  direct?: FileHandle;
}

/** Reads that are not a local file (another host's file over HTTP): fills `buf` with `length` bytes at `offset`, or throws ShortReadError. */
export interface ChunkReader {
  read(buf: Buffer, length: number, offset: number): Promise<Buffer>;
}

/** What a chunk is read from. */
export type ChunkSource = ChunkFile | ChunkReader;

function handleFor(file: ChunkFile, p: Piece): FileHandle {
  return file.direct && p.offset % DIRECT_ALIGN === 0 && p.length % DIRECT_ALIGN === 0 ? file.direct : file.handle;
}

/** Thrown by `readFull` when the file ends early (it shrank). */
export class ShortReadError extends Error {
  constructor(readonly offset: number) {
    super(`file ended at ${offset}`);
  }
}

async function readFull(fd: FileHandle, buf: Buffer, length: number, offset: number): Promise<Buffer> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await fd.read(buf, done, length - done, offset + done);
    if (bytesRead === 0) throw new ShortReadError(offset + done);
    done += bytesRead;
  }
  return buf;
}

const ZEROS = Buffer.alloc(1 << 20);

function hashZeros(h: xxh3.Xxh3, length: number): void {
  for (let n = length; n > 0; n -= ZEROS.length) h.update(n >= ZEROS.length ? ZEROS : ZEROS.subarray(0, n));
}

const zeroHashes = new Map<number, string>();

/** The chunk hash of `length` zero bytes (cached: whole-hole chunks cost nothing). */
export function zeroChunkHash(length: number): string {
  let hex = zeroHashes.get(length);
  if (hex === undefined) {
    const h = xxh3.Xxh3.withSeed(0n);
    hashZeros(h, length);
    hex = hashHex(h.digest());
    zeroHashes.set(length, hex);
  }
  return hex;
}

export function hashHex(v: bigint): string {
  return v.toString(16).padStart(16, '0');
}

/**
 * Streams `pieces` (one chunk, in order) from `fd`: returns the xxh3-64 of the
 * chunk's logical bytes as 16 hex digits. With `target`, each data piece is
 * also written there at the same offset (in order, one write at a time); all
 * writes have completed when this returns (not necessarily flushed: the caller
 * syncs). With `flushEvery`, a
 * background fdatasync of the target starts each time that many bytes were
 * written (one at a time), so the disk writes the chunk while it is still
 * being copied and the caller's final flush has little left to do.
 */
export async function streamChunk(source: ChunkSource, pieces: readonly Piece[], pool: BufferPool, target?: ChunkFile, flushEvery = 0): Promise<string> {
  const length = pieces.reduce((n, p) => n + p.length, 0);
  if (pieces.every((p) => !p.data)) return zeroChunkHash(length);
  const h = xxh3.Xxh3.withSeed(0n);
  const reads: Array<Promise<Buffer> | undefined> = new Array(pieces.length);
  let tail: Promise<void> = Promise.resolve();
  let writeError: unknown;
  let launched = 0;
  let unflushed = 0;
  let flushing: Promise<void> | undefined;
  const written = (n: number) => {
    unflushed += n;
    if (!target || flushEvery <= 0 || unflushed < flushEvery || flushing) return;
    unflushed = 0;
    flushing = target.handle.datasync().then(
      () => (flushing = undefined),
      (e: unknown) => {
        writeError ??= e;
        flushing = undefined;
      },
    );
  };
  const launch = (i: number, buf: Buffer) => {
    const p = pieces[i] as Piece;
    const r = 'read' in source ? source.read(buf, p.length, p.offset) : readFull(handleFor(source, p), buf, p.length, p.offset);
    r.catch(() => pool.give(buf)); // a failed read returns its buffer; the error surfaces when awaited
    reads[i] = r;
  };
  const readAhead = () => {
    while (launched < pieces.length) {
      if (!(pieces[launched] as Piece).data) {
        launched++;
        continue;
      }
      const buf = pool.tryTake();
      if (!buf) return;
      launch(launched++, buf);
    }
  };
  try {
    for (let i = 0; i < pieces.length; i++) {
      const p = pieces[i] as Piece;
      readAhead();
      if (!p.data) {
        hashZeros(h, p.length);
        continue;
      }
      if (i >= launched) {
        launch(i, await pool.take());
        launched = i + 1;
      }
      const buf = await (reads[i] as Promise<Buffer>);
      reads[i] = undefined;
      const view = buf.subarray(0, p.length);
      h.update(view);
      if (target) {
        // Writes go out one at a time, in file order (kinder to the file
        // system's allocator than parallel writes to one file); reads run ahead.
        tail = tail.then(() => writeAllAt(handleFor(target, p), buf, p.length, p.offset)).then(
          () => {
            pool.give(buf);
            written(p.length);
          },
          (e: unknown) => {
            writeError ??= e;
            pool.give(buf);
          },
        );
        if (writeError) throw writeError;
      } else pool.give(buf);
    }
  } finally {
    // Never leave I/O running on the caller's handles (or buffers lent out).
    await Promise.allSettled(reads.filter((r): r is Promise<Buffer> => r !== undefined).map((r) => r.then((b) => pool.give(b))));
    await tail;
    await flushing;
  }
  if (writeError) throw writeError;
  return hashHex(h.digest());
}
