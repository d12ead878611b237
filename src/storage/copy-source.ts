// Where a copy reads from: a local file, or a file another host serves
// (file-server.ts) read over HTTP with keep-alive connections, one request per
// piece (at most one buffer, 8 MiB), a few in flight as the engine reads
// ahead. Both give the copy engine the same three things: the source's
// identity (size, mtime, inode, mode: a resumed copy must read the same file),
// its data extents (holes are neither read nor sent), and positional reads.
import { constants } from 'node:fs';
import { open } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import type { ChunkSource } from './chunk-io.ts';
import { ShortReadError } from './chunk-io.ts';
import { CopySourceUnreachableError } from './copy-errors.ts';
import { sourceIdentity } from './copy-progress.ts';
import type { SourceIdentity } from './copy-progress.ts';
import { dataExtents } from './extents.ts';
import type { Extent } from './extents.ts';

/** A file another host serves for this copy. */
export interface RemoteFile {
  url: string;
  token: string;
}

export interface CopySource {
  /** For messages and the progress file (a path, or the remote file's URL). */
  readonly name: string;
  identity(): Promise<SourceIdentity & { mode: number }>;
  extents(): Promise<Extent[]>;
  /** Opens it for reading; close the result when done. */
  open(): Promise<{ reader: ChunkSource; close(): Promise<void> }>;
}

export function localSource(path: string, options: { qemuImg?: string } = {}): CopySource {
  return {
    name: path,
    identity: () => sourceIdentity(path),
    extents: () => dataExtents(path, options.qemuImg ? { binary: options.qemuImg } : {}),
    async open() {
      const handle = await open(path, constants.O_RDONLY);
      return { reader: { handle }, close: () => handle.close() };
    },
  };
}

const TIMEOUT_MS = 60_000;

export function remoteSource(remote: RemoteFile): CopySource {
  const base = remote.url.replace(/\/+$/, '');
  const headers = { authorization: `Bearer ${remote.token}` };
  const agent = new Agent({ keepAlive: true, maxSockets: 8 });
  const get = (path: string, onResponse: (status: number, chunk: Buffer) => void): Promise<void> =>
    new Promise((resolve, reject) => {
      const req = request(`${base}${path}`, { method: 'GET', headers, agent, timeout: TIMEOUT_MS }, (res) => {
        res.on('data', (chunk: Buffer) => onResponse(res.statusCode ?? 0, chunk));
        res.once('end', () => (res.statusCode === 200 ? resolve() : reject(new CopySourceUnreachableError(base, `HTTP ${res.statusCode} for ${path}`))));
        res.once('error', (err) => reject(new CopySourceUnreachableError(base, err.message)));
      });
      req.once('timeout', () => req.destroy(new Error(`no answer within ${TIMEOUT_MS} ms`)));
      req.once('error', (err) => reject(new CopySourceUnreachableError(base, err.message)));
      req.end();
    });
  const getJson = async <T>(path: string): Promise<T> => {
    const parts: Buffer[] = [];
    await get(path, (_, chunk) => void parts.push(chunk));
    return JSON.parse(Buffer.concat(parts).toString('utf8')) as T;
  };
  return {
    name: base,
    identity: () => getJson<SourceIdentity & { mode: number }>('/identity'),
    extents: () => getJson<Extent[]>('/extents'),
    async open() {
      const reader: ChunkSource = {
        async read(buf, length, offset) {
          let at = 0;
          await get(`/data?offset=${offset}&length=${length}`, (status, chunk) => {
            if (status !== 200) return;
            const n = Math.min(chunk.length, length - at);
            chunk.copy(buf, at, 0, n);
            at += n;
          });
          if (at < length) throw new ShortReadError(offset + at);
          return buf;
        },
      };
      return { reader, close: async () => agent.destroy() };
    },
  };
}
