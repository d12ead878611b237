// Data extents of a file, found without native code: `qemu-img map` with the
// raw driver over file-posix reports the file's SEEK_DATA/SEEK_HOLE layout
// (data extents vs holes), whatever the file holds (qcow2 or raw image). Only
// data extents need reading; holes read as zeros.
import { mapImage } from '../qemu/index.ts';

/** A byte range [offset, offset + length). */
export interface Extent {
  offset: number;
  length: number;
}

/** The data extents of `path` in file order, adjacent ones merged. */
export async function dataExtents(path: string, options: { binary?: string } = {}): Promise<Extent[]> {
  const parsed = await mapImage(path, { format: 'raw', ...(options.binary ? { binary: options.binary } : {}) });
  const extents: Extent[] = [];
  for (const e of parsed) {
    if (!e.data || e.length === 0) continue;
    const last = extents[extents.length - 1];
    if (last && last.offset + last.length === e.start) last.length += e.length;
    else extents.push({ offset: e.start, length: e.length });
  }
  return extents;
}

/** One piece of a chunk: a data range to read, or a hole (zeros). */
export interface Piece {
  offset: number;
  length: number;
  data: boolean;
}

/**
 * Cuts [start, end) into pieces in order: data ranges (at most `maxPiece`
 * bytes each) where `extents` (sorted) have data, holes elsewhere.
 */
export function piecesOf(extents: readonly Extent[], start: number, end: number, maxPiece: number): Piece[] {
  const pieces: Piece[] = [];
  let pos = start;
  const pushData = (from: number, to: number) => {
    for (let o = from; o < to; o += maxPiece) pieces.push({ offset: o, length: Math.min(maxPiece, to - o), data: true });
  };
  for (const e of firstOverlap(extents, start, end)) {
    const from = Math.max(e.offset, start);
    const to = Math.min(e.offset + e.length, end);
    if (from > pos) pieces.push({ offset: pos, length: from - pos, data: false });
    pushData(from, to);
    pos = to;
  }
  if (pos < end) pieces.push({ offset: pos, length: end - pos, data: false });
  return pieces;
}

/** The extents overlapping [start, end), found by binary search. */
function* firstOverlap(extents: readonly Extent[], start: number, end: number): Generator<Extent> {
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    const e = extents[mid] as Extent;
    if (e.offset + e.length <= start) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < extents.length; i++) {
    const e = extents[i] as Extent;
    if (e.offset >= end) return;
    yield e;
  }
}

/** Data bytes of `extents` inside [start, end). */
export function dataBytesIn(extents: readonly Extent[], start: number, end: number): number {
  let n = 0;
  for (const e of firstOverlap(extents, start, end)) n += Math.min(e.offset + e.length, end) - Math.max(e.offset, start);
  return n;
}
