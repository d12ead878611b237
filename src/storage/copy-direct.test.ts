// The copy engine's two write paths give the same copy: O_DIRECT (the
// default where the file system allows it: aligned pieces through an O_DIRECT
// handle, the unaligned tail through the ordinary one) and buffered
// (direct: false), on a sparse raw file whose size is not a multiple of 4 KiB,
// with data ending in its last partial page. Resume after SIGKILL and
// verification failure run on the O_DIRECT path in copy-engine.test.ts
// (/var/tmp is ext4 here).
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { alignedBuffers } from '../common/index.ts';
import { copyFile, fileContentHash } from './copy-engine.ts';

const MiB = 1024 * 1024;

describe('copy engine write paths', () => {
  const dir = mkdtempSync('/var/tmp/offshoot-copy-direct-');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('hands out page-aligned buffers', () => {
    const [a, b] = alignedBuffers(2, 3 * 4096 + 5);
    expect(a?.length).toBe(3 * 4096 + 5);
    // Offsets inside one WebAssembly.Memory, which V8 maps page aligned.
    expect(a?.byteOffset).toBe(0);
    expect(b?.byteOffset).toBe(4 * 4096);
  });

  it('copies the same bytes with and without O_DIRECT, unaligned tail included', async () => {
    const source = join(dir, 'odd.raw');
    const size = 9 * MiB + 1234;
    const fd = openSync(source, 'w');
    writeSync(fd, randomBytes(2 * MiB), 0, 2 * MiB, MiB);
    writeSync(fd, randomBytes(MiB + 1234), 0, MiB + 1234, 8 * MiB);
    closeSync(fd);
    expect(statSync(source).size).toBe(size);
    const results = [];
    for (const direct of [true, false]) {
      const target = join(dir, `copy-${direct}.raw`);
      const result = await copyFile({ source, target, chunkBytes: 2 * MiB, bufferBytes: 512 * 1024, direct });
      expect(result.state).toBe('done');
      expect(statSync(target).size).toBe(size);
      expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
      expect(statSync(target).blocks * 512).toBeLessThan(5 * MiB); // holes stay holes
      results.push(result.contentHash);
    }
    expect(results[0]).toBe(results[1]);
    expect(results[0]).toBe(await fileContentHash(source, { chunkBytes: 2 * MiB }));
  });
});
