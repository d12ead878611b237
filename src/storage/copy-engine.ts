// The copy engine: copies one disk file (qcow2 or raw image, usually a frozen
// base) byte-exact and sparse, in fixed chunks, resumably. Only the source's
// data extents are read and written; holes stay holes. After each chunk the
// target is flushed and the chunk recorded (with its hash) in the progress
// file beside the target, so a killed copy resumes where it stopped and
// another process (later: another host) can finish a stopped one. Every
// chunk is read back from the target and checked against its recorded hash
// before the copy reports done with a content hash: chunks copied by this run
// right after they are written (overlapping the next chunk's copy), chunks
// recorded by earlier runs once all chunks are recorded.
//
// Pipeline: the source is read through the page cache (a few 8 MiB reads
// ahead), the target written with O_DIRECT where its file system allows it
// (chunk-io.ts: new page-cache pages are what made copies slow here), and a
// chunk's flush and progress record run while the next chunk copies; a chunk
// is recorded only after its flush, so the guarantee is the same as flushing
// and recording before going on. The read-back goes through O_DIRECT too, so
// it checks what the device holds, not the page cache.
//
// Sources: a local file, or a file another host serves over HTTP for this
// copy (copy-source.ts, `remote`): same chunks, same progress file, same
// checks, so a copy between hosts resumes and hands over like a local one.
//
// Ownership: the target's copy lock (copy-lock.ts) is held for the whole run
// and renewed; the engine checks it still holds it before each chunk and
// before recording one, so two workers (even on two hosts sharing the
// folder) never write the same target.
//
// Content hash: "xxh3-64:<chunkBytes>:<hex>", the xxh3-64 of the file size and
// the chunk hashes (each the xxh3-64 of the chunk's logical bytes, holes as
// zeros). It depends only on the bytes and the chunk size, not on which
// regions are holes: equal files give equal hashes at equal chunk sizes.
import { constants } from 'node:fs';
import { open, stat, unlink } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { xxh3 } from '@node-rs/xxhash';
import { openDirect } from '../common/index.ts';
import { BufferPool, ShortReadError, hashHex, streamChunk } from './chunk-io.ts';
import type { ChunkFile } from './chunk-io.ts';
import { CopySourceChangedError, CopyTargetExistsError, CopyVerifyFailedError } from './copy-errors.ts';
import { acquireCopyLock } from './copy-lock.ts';
import type { CopyLock } from './copy-lock.ts';
import { checkSameSource, progressPath, readProgress, removeProgress, writeProgress } from './copy-progress.ts';
import { localSource, remoteSource } from './copy-source.ts';
import type { CopySource, RemoteFile } from './copy-source.ts';
import type { ChunkRecord, CopyProgressFile } from './copy-progress.ts';
import { dataBytesIn, dataExtents, piecesOf } from './extents.ts';
import type { Extent, Piece } from './extents.ts';

export const DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024;
// Four 8 MiB buffers (reads ahead and the O_DIRECT write in flight) measured fastest here (bench/copy.ts).
export const DEFAULT_BUFFER_BYTES = 8 * 1024 * 1024;
export const DEFAULT_BUFFERS = 4;
/** Background flushes while a chunk is written (buffered targets only: an O_DIRECT target has nothing to flush). */
export const DEFAULT_FLUSH_EVERY_BYTES = 16 * 1024 * 1024;

export const COPY_STATES = ['done', 'stopped'] as const;
export type CopyState = (typeof COPY_STATES)[number];
export function isCopyState(v: unknown): v is CopyState {
  return typeof v === 'string' && (COPY_STATES as readonly string[]).includes(v);
}

export interface CopyOptions {
  /** The source file (with `remote`: only a name for messages). */
  source: string;
  /** Read the source from the file server of the host that has it (see file-server.ts). */
  remote?: RemoteFile;
  target: string;
  /** Chunk size of a new copy (a resumed copy keeps the recorded one). Default 64 MiB. */
  chunkBytes?: number;
  /** Size of each I/O buffer (rounded up to 4 KiB). Default 8 MiB. */
  bufferBytes?: number;
  /** Number of I/O buffers (reads ahead + the write in flight). Default 4. */
  buffers?: number;
  /** A buffered target: starts a background flush each time this many bytes were written (0: once per chunk). Default 16 MiB. */
  flushEveryBytes?: number;
  /** Write and read back the target with O_DIRECT when its file system allows it. Default true. */
  direct?: boolean;
  /** Stops the copy after the chunk in flight is recorded; the result is 'stopped'. */
  signal?: AbortSignal;
  onProgress?: (progress: CopyProgress) => void;
  /** Bandwidth limit for this run (data bytes per second), e.g. for background pool refills. */
  maxBytesPerSecond?: number;
  /** qemu-img binary (for the extent map). */
  qemuImg?: string;
}

export interface CopyProgress {
  /** Data bytes recorded done (all runs) and total data bytes of the source. */
  bytesDone: number;
  bytesTotal: number;
  chunksDone: number;
  chunksTotal: number;
  /** Data bytes per second copied by this run. */
  bytesPerSecond: number;
}

export interface CopyResult {
  state: CopyState;
  source: string;
  target: string;
  /** Apparent size of the file. */
  size: number;
  chunkBytes: number;
  /** Chunks copied by this run, and chunks found recorded by an earlier run. */
  chunksCopied: number;
  chunksSkipped: number;
  bytesCopied: number;
  elapsedMs: number;
  progress: CopyProgress;
  /** Set when state is 'done'. */
  contentHash?: string;
}

/** The content hash of a file of `size` bytes from its chunk hashes (see the header). */
export function contentHashOf(size: number, chunkBytes: number, chunkHashes: readonly string[]): string {
  const buf = Buffer.alloc(8 + 8 * chunkHashes.length);
  buf.writeBigUInt64BE(BigInt(size), 0);
  chunkHashes.forEach((h, i) => buf.writeBigUInt64BE(BigInt(`0x${h}`), 8 + 8 * i));
  return `xxh3-64:${chunkBytes}:${hashHex(xxh3.xxh64(buf, 0n))}`;
}

function chunkRange(i: number, chunkBytes: number, size: number): [number, number] {
  return [i * chunkBytes, Math.min(size, (i + 1) * chunkBytes)];
}

/** Hashes the chunks of an open file from its own extent map. */
async function hashChunks(fd: FileHandle, path: string, size: number, chunkBytes: number, pool: BufferPool, qemuImg: string | undefined): Promise<string[]> {
  const extents = await dataExtents(path, qemuImg ? { binary: qemuImg } : {});
  const hashes: string[] = [];
  const chunks = Math.ceil(size / chunkBytes);
  for (let i = 0; i < chunks; i++) {
    const [start, end] = chunkRange(i, chunkBytes, size);
    hashes.push(await streamChunk({ handle: fd }, piecesOf(extents, start, end, pool.size), pool));
  }
  return hashes;
}

/** The chunk hashes of the file at `path`, by reading it (holes as zeros). */
export async function fileChunkHashes(path: string, options: { chunkBytes?: number; bufferBytes?: number; buffers?: number; qemuImg?: string } = {}): Promise<string[]> {
  const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
  const pool = new BufferPool(options.buffers ?? DEFAULT_BUFFERS, options.bufferBytes ?? DEFAULT_BUFFER_BYTES);
  const fd = await open(path, 'r');
  try {
    const { size } = await fd.stat();
    return await hashChunks(fd, path, size, chunkBytes, pool, options.qemuImg);
  } finally {
    await fd.close();
  }
}

/** The content hash of the file at `path`, by reading it (same definition as a copy's result). */
export async function fileContentHash(path: string, options: { chunkBytes?: number; bufferBytes?: number; buffers?: number; qemuImg?: string } = {}): Promise<string> {
  const { size } = await stat(path);
  return contentHashOf(size, options.chunkBytes ?? DEFAULT_CHUNK_BYTES, await fileChunkHashes(path, options));
}

async function exists(path: string): Promise<boolean> {
  try {
    await (await open(path, 'r')).close();
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

function abortableSleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}

/**
 * Copies `source` to `target` (or resumes the copy recorded beside `target`).
 * Resolves 'done' once the target is verified, its progress file removed and
 * its mode set to the source's; resolves 'stopped' if `signal` fired (the
 * progress file stays, ready to resume). Throws COPY_BUSY, COPY_TARGET_EXISTS,
 * COPY_SOURCE_CHANGED, COPY_VERIFY_FAILED (the progress file stays) or I/O errors.
 */
export async function copyFile(options: CopyOptions): Promise<CopyResult> {
  const started = performance.now();
  const { target } = options;
  const source = options.remote ? remoteSource(options.remote) : localSource(options.source, options.qemuImg ? { qemuImg: options.qemuImg } : {});
  const lock = await acquireCopyLock(target);
  try {
    const identity = await source.identity();
    const { mode, ...sourceId } = identity;
    let progress = await readProgress(target);
    const targetExists = await exists(target);
    if (progress) {
      checkSameSource(progress.source, sourceId);
      if (!targetExists) progress = { ...progress, done: {} }; // recorded chunks are gone with the target
    } else if (targetExists) {
      throw new CopyTargetExistsError(target);
    }
    if (!progress) {
      const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
      if (!Number.isInteger(chunkBytes) || chunkBytes <= 0) throw new RangeError(`chunk size must be a positive integer, got ${chunkBytes}`);
      const now = new Date().toISOString();
      progress = { kind: 'offshoot-copy-progress', version: 1, source: sourceId, size: identity.size, chunkBytes, chunks: Math.ceil(identity.size / chunkBytes), done: {}, createdAt: now, updatedAt: now };
    }
    // The progress file exists before the target does: a target without one is never a copy in progress.
    await writeProgress(target, progress);
    return await runCopy(options, source, lock, progress, mode, started);
  } finally {
    await lock.release();
  }
}

async function runCopy(options: CopyOptions, from: CopySource, lock: CopyLock, initial: CopyProgressFile, mode: number, started: number): Promise<CopyResult> {
  const { source, target, signal } = options;
  let progress = initial;
  const { size, chunkBytes, chunks } = progress;
  const qemuImgOpt = options.qemuImg ? { binary: options.qemuImg } : {};
  const extents: Extent[] = await from.extents();
  checkSameSource(progress.source, await from.identity()); // not changed while mapping
  const bytesTotal = dataBytesIn(extents, 0, size);
  const pool = new BufferPool(options.buffers ?? DEFAULT_BUFFERS, options.bufferBytes ?? DEFAULT_BUFFER_BYTES);
  const opened = await from.open();
  const src = opened.reader;
  const dst: ChunkFile = { handle: await open(target, constants.O_RDWR | constants.O_CREAT, 0o600) };
  dst.direct = await openDirect(target, constants.O_RDWR, options.direct ?? true).catch(async (err: unknown) => {
    await opened.close();
    await dst.handle.close();
    throw err;
  });
  const flushEvery = dst.direct ? 0 : (options.flushEveryBytes ?? DEFAULT_FLUSH_EVERY_BYTES);
  let chunksCopied = 0;
  let bytesCopied = 0;
  const chunksSkipped = Object.keys(progress.done).length;
  // Progress reports what is durably recorded (the progress file as last written).
  let saved = progress;
  const save = async () => {
    const next = progress;
    // Only the lock's holder records chunks (a worker that lost it stops instead).
    lock.assertHeld();
    await writeProgress(target, next);
    saved = next;
  };
  const snapshot = (): CopyProgress => {
    const seconds = (performance.now() - started) / 1000;
    const bytesDone = Object.values(saved.done).reduce((n, c) => n + c.bytes, 0);
    return { bytesDone, bytesTotal, chunksDone: Object.keys(saved.done).length, chunksTotal: chunks, bytesPerSecond: seconds > 0 ? bytesCopied / seconds : 0 };
  };
  const result = (state: CopyState, contentHash?: string): CopyResult => ({
    state, source, target, size, chunkBytes, chunksCopied, chunksSkipped, bytesCopied, elapsedMs: performance.now() - started, progress: snapshot(), ...(contentHash ? { contentHash } : {}),
  });
  // Chunks copied by this run are read back right after they are written,
  // while the next chunk copies (one read-back at a time); chunks recorded by
  // earlier runs are read back at the end. Mismatches are collected here.
  const verifyPool = new BufferPool(2, pool.size);
  const bad: Array<{ chunk: number; actual: string }> = [];
  let verifying: Promise<void> | undefined;
  let verifyError: unknown;
  const verifyChunk = (i: number, pieces: Piece[], expected: string) =>
    streamChunk(dst, pieces, verifyPool).then(
      (actual) => void (actual !== expected && bad.push({ chunk: i, actual })),
      (e: unknown) => void (verifyError ??= e),
    );
  // A chunk's flush and record (one at a time, in chunk order), while the next chunk copies.
  let recording: Promise<void> | undefined;
  let recordError: unknown;
  const settleRecord = async () => {
    await recording;
    recording = undefined;
    if (recordError) throw recordError;
  };
  const settleVerify = async () => {
    await verifying;
    verifying = undefined;
    if (verifyError) throw verifyError;
    if (bad.length > 0) await failVerify();
  };
  const failVerify = async (): Promise<never> => {
    await settleRecord();
    // Forget the bad chunks so that a resume copies them again.
    const done = { ...progress.done };
    for (const b of bad) delete done[String(b.chunk)];
    await writeProgress(target, { ...progress, done, updatedAt: new Date().toISOString() });
    const first = bad[0] as { chunk: number; actual: string };
    const expected = (progress.done[String(first.chunk)] as ChunkRecord).hash;
    throw new CopyVerifyFailedError(target, first.chunk, first.chunk * chunkBytes, expected, first.actual, bad.map((b) => b.chunk));
  };
  try {
    if ((await dst.handle.stat()).size !== size) await dst.handle.truncate(size);
    options.onProgress?.(snapshot());
    const skipped = Object.keys(progress.done).map(Number);
    for (let i = 0; i < chunks; i++) {
      if (progress.done[String(i)]) continue;
      if (signal?.aborted) {
        await settleRecord();
        if (saved !== progress) await save();
        await settleVerify();
        return result('stopped');
      }
      lock.assertHeld();
      const [start, end] = chunkRange(i, chunkBytes, size);
      const pieces = piecesOf(extents, start, end, pool.size);
      let hash: string;
      try {
        hash = await streamChunk(src, pieces, pool, dst, flushEvery);
      } catch (err) {
        if (err instanceof ShortReadError) throw new CopySourceChangedError(from.name, `file ended at ${err.offset} before its recorded size ${size}`);
        throw err;
      }
      const bytes = dataBytesIn(extents, start, end);
      chunksCopied++;
      bytesCopied += bytes;
      await settleRecord();
      const record = { hash, bytes };
      if (bytes > 0) {
        recording = (async () => {
          await dst.handle.datasync();
          progress = { ...progress, done: { ...progress.done, [String(i)]: record }, updatedAt: new Date().toISOString() };
          await save();
          options.onProgress?.(snapshot());
        })().catch((e: unknown) => void (recordError ??= e));
      } else {
        // A hole chunk costs nothing to redo; it is recorded with the next data chunk.
        progress = { ...progress, done: { ...progress.done, [String(i)]: record }, updatedAt: new Date().toISOString() };
      }
      await settleVerify();
      verifying = verifyChunk(i, pieces, hash);
      if (options.maxBytesPerSecond) {
        const due = (bytesCopied / options.maxBytesPerSecond) * 1000 - (performance.now() - started);
        if (due > 0) await abortableSleep(due, signal);
      }
    }
    await settleRecord();
    if (saved !== progress) {
      await save();
      options.onProgress?.(snapshot());
    }
    await settleVerify();
    // Every chunk is recorded: the source must still be what was copied, and
    // the chunks recorded by earlier runs must read back as recorded (from the
    // target's own extent map: anything written where the source has holes shows).
    checkSameSource(progress.source, await from.identity());
    if (skipped.length > 0) {
      const targetExtents = await dataExtents(target, qemuImgOpt);
      for (const i of skipped) {
        const [start, end] = chunkRange(i, chunkBytes, size);
        await verifyChunk(i, piecesOf(targetExtents, start, end, pool.size), (progress.done[String(i)] as ChunkRecord).hash);
      }
      await settleVerify();
    }
    const recorded = Array.from({ length: chunks }, (_, i) => (progress.done[String(i)] as ChunkRecord).hash);
    await dst.handle.chmod(mode);
    await dst.handle.sync();
    await removeProgress(target);
    return result('done', contentHashOf(size, chunkBytes, recorded));
  } finally {
    await recording;
    await verifying;
    await opened.close();
    await dst.direct?.close();
    await dst.handle.close();
  }
}

/**
 * Cancels the copy into `target`: removes the target, its progress file and
 * its lock. Throws COPY_BUSY while a worker runs the copy (stop it first). A
 * target without a progress file is a finished copy (or not a copy): it is
 * left alone. Returns the paths removed.
 */
export async function cancelCopy(target: string): Promise<string[]> {
  const lock = await acquireCopyLock(target);
  const removed: string[] = [];
  try {
    if (await readProgress(target).catch(() => true)) {
      for (const path of [target, progressPath(target)]) {
        try {
          await unlink(path);
          removed.push(path);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
        }
      }
    }
  } finally {
    await lock.release();
  }
  return removed;
}

