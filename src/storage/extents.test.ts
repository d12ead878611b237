// Data extents from `qemu-img map` of real sparse files, and cutting a chunk
// into data pieces and holes.
import { closeSync, mkdtempSync, openSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { dataBytesIn, dataExtents, piecesOf } from './extents.ts';

const MiB = 1024 * 1024;

describe('extents', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync('/var/tmp/offshoot-ext-');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('finds the data extents of a sparse file (holes left out)', async () => {
    const path = join(dir, 'f');
    closeSync(openSync(path, 'w'));
    truncateSync(path, 64 * MiB);
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(2 * MiB, 1), 0, 2 * MiB, 8 * MiB);
    writeSync(fd, Buffer.alloc(4096, 2), 0, 4096, 40 * MiB);
    closeSync(fd);
    expect(await dataExtents(path)).toEqual([
      { offset: 8 * MiB, length: 2 * MiB },
      { offset: 40 * MiB, length: 4096 },
    ]);
  });

  it('cuts a range into data pieces of at most the buffer size and holes', () => {
    const extents = [
      { offset: 100, length: 50 },
      { offset: 300, length: 500 },
    ];
    expect(piecesOf(extents, 120, 400, 40)).toEqual([
      { offset: 120, length: 30, data: true },
      { offset: 150, length: 150, data: false },
      { offset: 300, length: 40, data: true },
      { offset: 340, length: 40, data: true },
      { offset: 380, length: 20, data: true },
    ]);
    expect(piecesOf(extents, 0, 100, 40)).toEqual([{ offset: 0, length: 100, data: false }]);
    expect(dataBytesIn(extents, 120, 400)).toBe(130);
  });
});
