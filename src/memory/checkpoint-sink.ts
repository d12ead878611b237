// Where the checkpoint writer's stored block bytes go: appended back to back
// after the header, in the order given, with at most one write in flight
// while the next bytes gather. Two sinks write the same bytes:
//
// - batches (any file system): up to `stagingBytes` of parts per writev,
//   straight from the buffers they were packed into (no copy on this thread);
//   a block buffer goes back to the writer once its batch is written.
// - direct (where the file system allows O_DIRECT and is not tmpfs): parts are
//   copied into two page-aligned staging buffers and each full buffer is
//   written with O_DIRECT, so the file's pages never enter the page cache.
//   On this machine new page-cache pages are expensive and a buffered file
//   leaves all of its bytes to the closing fsync (a 2.1 GiB file from tmpfs to
//   ext4: buffered + fsync 2.1-4.2 s, O_DIRECT 1.4-2.0 s). The copy costs the
//   event loop's thread ~18 GB/s of memcpy. The bytes after the last full
//   page go through the ordinary handle when the sink ends (the table of
//   contents and the header follow them there), so nothing unaligned is
//   ever written with O_DIRECT; the first page, which holds the header's
//   placeholder, is written directly and rewritten through the ordinary
//   handle at the end (the kernel reads it back from the disk then).
//
// The caller fsyncs the ordinary handle at the end: that flushes the device's
// cache for the O_DIRECT writes too.
import type { FileHandle } from 'node:fs/promises';
import { DIRECT_ALIGN, alignedBuffers, writeAllAt } from '../common/index.ts';

export interface StoredBytesSink {
  /** Appends `part` after everything appended before. `holder`: the writer's block buffer `part` is a view of, handed back through `release` once no longer needed. */
  append(part: Buffer, holder?: Buffer): Promise<void>;
  /** Writes everything appended; the file then holds it up to `position`. */
  end(): Promise<void>;
  /** Whether `append` copies `part` at once (else `part` must stay valid until its batch is written). */
  readonly copiesParts: boolean;
  /** The file offset the next byte appended goes to. */
  readonly position: number;
  /** Waits for any write in flight (on failure: before the file is closed and removed). */
  settle(): Promise<void>;
}

export interface SinkOptions {
  /** The ordinary handle of the file. */
  file: FileHandle;
  /** File offset of the first byte appended. */
  start: number;
  /** Bytes per write at most. */
  stagingBytes: number;
  /** Gives a block buffer back to the writer. */
  release: (buf: Buffer) => void;
  /** Times a wait for the write in flight (the writer's writeWaitMs). */
  waited: <T>(p: Promise<T>) => Promise<T>;
}

/** Parts written with one writev per batch, straight from the writer's buffers. */
export function batchSink({ file, start, stagingBytes, release, waited }: SinkOptions, batchBlocks: number): StoredBytesSink {
  let batch: { parts: Buffer[]; bufs: Buffer[]; bytes: number } = { parts: [], bufs: [], bytes: 0 };
  let inFlight: Promise<void> | undefined;
  let written = start;
  const flush = async () => {
    if (batch.parts.length === 0) return;
    const { parts, bufs, bytes } = batch;
    const previous = inFlight;
    inFlight = writevFull(file, parts, written).then(() => {
      for (const b of bufs) release(b); // written: the block buffers take new blocks
    });
    inFlight.catch(() => undefined); // surfaces when waited for
    written += bytes;
    batch = { parts: [], bufs: [], bytes: 0 };
    // The batch before must be written before the next one starts gathering.
    await waited(previous ?? Promise.resolve());
  };
  return {
    copiesParts: false,
    get position() {
      return written + batch.bytes;
    },
    async append(part, holder) {
      const holds = holder !== undefined && part.buffer === holder.buffer;
      if (batch.bytes + part.length > stagingBytes || (holds && batch.bufs.length >= batchBlocks)) await flush();
      batch.parts.push(part);
      batch.bytes += part.length;
      if (holds) batch.bufs.push(holder);
      else if (holder) release(holder);
    },
    async end() {
      await flush();
      await waited(inFlight ?? Promise.resolve());
    },
    async settle() {
      await inFlight?.catch(() => undefined);
    },
  };
}

/** Parts copied into page-aligned staging buffers, each full one written through `direct` (an O_DIRECT handle of the same file). */
export function directSink({ file, start, stagingBytes, release, waited }: SinkOptions, direct: FileHandle): StoredBytesSink {
  if (start >= DIRECT_ALIGN) throw new RangeError(`direct sink: start ${start} must lie in the first page`);
  const capacity = Math.max(DIRECT_ALIGN, Math.floor(stagingBytes / DIRECT_ALIGN) * DIRECT_ALIGN);
  const staging = alignedBuffers(2, capacity);
  let current = 0;
  // The staging buffer being filled holds the file's bytes from `base` (page aligned) on, `fill` of them;
  // the first page's bytes before `start` are zero (the header is written over them at the end).
  let base = 0;
  let fill = start;
  (staging[0] as Buffer).fill(0, 0, start);
  let inFlight: Promise<void> | undefined;
  const rotate = async () => {
    await waited(inFlight ?? Promise.resolve()); // the other buffer is free once its write is done
    inFlight = writeAllAt(direct, staging[current] as Buffer, fill, base);
    inFlight.catch(() => undefined); // surfaces at the next wait
    base += fill;
    fill = 0;
    current ^= 1;
  };
  return {
    copiesParts: true,
    get position() {
      return base + fill;
    },
    async append(part, holder) {
      for (let off = 0; off < part.length; ) {
        const n = part.copy(staging[current] as Buffer, fill, off, Math.min(part.length, off + capacity - fill));
        fill += n;
        off += n;
        if (fill === capacity) await rotate();
      }
      if (holder) release(holder); // copied: the block buffer takes a new block at once
    },
    async end() {
      await waited(inFlight ?? Promise.resolve());
      inFlight = undefined;
      const buf = staging[current] as Buffer;
      const aligned = fill - (fill % DIRECT_ALIGN);
      if (aligned > 0) await waited(writeAllAt(direct, buf, aligned, base));
      if (fill > aligned) await waited(writeAllAt(file, buf.subarray(aligned, fill), fill - aligned, base + aligned));
    },
    async settle() {
      await inFlight?.catch(() => undefined);
    },
  };
}

/** Writes `parts` back to back at `position`, all of them (writev writes at most IOV_MAX parts, or fewer bytes). */
async function writevFull(file: FileHandle, parts: Buffer[], position: number): Promise<void> {
  let rest = parts;
  let at = position;
  while (rest.length > 0) {
    const { bytesWritten } = await file.writev(rest, at);
    if (bytesWritten <= 0) throw new Error(`writev wrote nothing at ${at}`);
    at += bytesWritten;
    let skip = bytesWritten;
    const next: Buffer[] = [];
    for (const part of rest) {
      if (skip >= part.length) skip -= part.length;
      else {
        next.push(skip > 0 ? part.subarray(skip) : part);
        skip = 0;
      }
    }
    rest = next;
  }
}
