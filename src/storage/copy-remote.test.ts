// A copy from another host's file server (here on loopback): byte-exact and
// sparse like a local copy (only data extents travel), resumable from its
// progress file after a stop, refused with the wrong token, and the server
// sends nothing but its one file.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { copyFile, fileContentHash } from './copy-engine.ts';
import { serveFile } from './file-server.ts';

const MiB = 1024 * 1024;

describe('copy from a file server', () => {
  const dir = mkdtempSync('/var/tmp/offshoot-copy-remote-');
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const source = join(dir, 'base.raw');
  closeSync(openSync(source, 'w'));
  truncateSync(source, 64 * MiB);
  const fd = openSync(source, 'r+');
  writeSync(fd, randomBytes(5 * MiB), 0, 5 * MiB, 3 * MiB);
  writeSync(fd, randomBytes(2 * MiB + 77), 0, 2 * MiB + 77, 40 * MiB);
  closeSync(fd);

  it('copies only the data extents, byte-exact, and reports what it sent', async () => {
    const server = await serveFile({ path: source, bind: '127.0.0.1' });
    try {
      const target = join(dir, 'copy.raw');
      const result = await copyFile({ source: 'ds.x:disks/base.raw', remote: { url: server.url, token: server.token }, target, chunkBytes: 4 * MiB, bufferBytes: MiB });
      expect(result.state).toBe('done');
      expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
      expect(result.contentHash).toBe(await fileContentHash(source, { chunkBytes: 4 * MiB }));
      // Holes stay holes: about 7 MiB of data travelled for a 64 MiB file.
      expect(server.bytesServed).toBeLessThan(9 * MiB);
      expect(result.bytesCopied).toBe(server.bytesServed);
    } finally {
      await server.close();
    }
  });

  it('resumes a stopped copy from its progress file, even from a new server', async () => {
    const target = join(dir, 'resumed.raw');
    const first = await serveFile({ path: source, bind: '127.0.0.1' });
    const stop = new AbortController();
    let chunks = 0;
    const stopped = await copyFile({ source: 'x', remote: { url: first.url, token: first.token }, target, chunkBytes: MiB, bufferBytes: 256 * 1024, signal: stop.signal, onProgress: (p) => (chunks = p.chunksDone) >= 3 && stop.abort() });
    await first.close();
    expect(stopped.state).toBe('stopped');
    expect(chunks).toBeGreaterThanOrEqual(3);
    const second = await serveFile({ path: source, bind: '127.0.0.1' });
    try {
      const done = await copyFile({ source: 'x', remote: { url: second.url, token: second.token }, target });
      expect(done.state).toBe('done');
      expect(done.chunksSkipped).toBeGreaterThanOrEqual(3);
      expect(readFileSync(target).equals(readFileSync(source))).toBe(true);
    } finally {
      await second.close();
    }
  });

  it('refuses a wrong token and serves nothing else', async () => {
    const server = await serveFile({ path: source, bind: '127.0.0.1' });
    try {
      await expect(copyFile({ source: 'x', remote: { url: server.url, token: 'wrong' }, target: join(dir, 'never.raw') })).rejects.toMatchObject({ code: 'COPY_SOURCE_UNREACHABLE' });
      const other = await fetch(`${server.url}/data?offset=0&length=10&path=/etc/passwd`, { headers: { authorization: 'Bearer nope' } });
      expect(other.status).toBe(401);
      const listing = await fetch(`${server.url}/`, { headers: { authorization: `Bearer ${server.token}` } });
      expect(listing.status).toBe(404);
      expect(server.bytesServed).toBe(0);
    } finally {
      await server.close();
    }
    // A closed server is gone.
    await expect(fetch(`${server.url}/identity`)).rejects.toThrow();
    expect(execFileSync('ls', [dir]).toString()).not.toContain('never.raw.copy.lock');
  });
});
