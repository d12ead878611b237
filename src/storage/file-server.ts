// A one-file HTTP server: how a copy reads a file that is on another host.
// The host that has the file serves exactly that file, read-only, on one
// address, behind a one-time bearer token, until it is closed or idle for
// `idleMs`; the copy engine on the other host reads it as a remote copy source
// (remote-source.ts) with the same chunks, progress file, hashes and resume as
// a local copy. Three requests:
//   GET /identity        {size, mtimeNs, ino, mode} of the file now
//   GET /extents         its data extents (holes are never sent)
//   GET /data?offset=&length=   those bytes (shorter if the file shrank)
// The token is compared in constant time; nothing else is served. Bytes go in
// the clear (the agent protocol itself is plain HTTP on the management
// network); the token dies with the server.
import { randomBytes, timingSafeEqual } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { sourceIdentity } from './copy-progress.ts';
import { dataExtents } from './extents.ts';

export interface FileServerOptions {
  /** The file to serve. */
  path: string;
  /** The local address to listen on. */
  bind: string;
  /** Closes by itself after this long without a request (default 10 minutes). */
  idleMs?: number;
  qemuImg?: string;
}

export interface FileServer {
  url: string;
  token: string;
  /** Data bytes sent so far. */
  readonly bytesServed: number;
  /** Whether it closed (by request or idle). */
  readonly closed: boolean;
  close(): Promise<void>;
}

const MAX_RANGE = 64 * 1024 * 1024;

function tokenMatches(header: string | undefined, token: string): boolean {
  const given = Buffer.from(header?.startsWith('Bearer ') ? header.slice(7) : '');
  const wanted = Buffer.from(token);
  return given.length === wanted.length && timingSafeEqual(given, wanted);
}

function json(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

export async function serveFile(options: FileServerOptions): Promise<FileServer> {
  const token = randomBytes(32).toString('base64url');
  const idleMs = options.idleMs ?? 10 * 60 * 1000;
  let bytesServed = 0;
  let closed = false;
  let idle: NodeJS.Timeout | undefined;
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (!tokenMatches(req.headers.authorization, token)) return json(res, 401, { code: 'UNAUTHORIZED', message: 'wrong or missing token' });
    if (req.method !== 'GET') return json(res, 405, { code: 'INVALID_INPUT', message: 'GET only' });
    const url = new URL(req.url ?? '/', 'http://file');
    if (url.pathname === '/identity') return json(res, 200, await sourceIdentity(options.path));
    if (url.pathname === '/extents') return json(res, 200, await dataExtents(options.path, options.qemuImg ? { binary: options.qemuImg } : {}));
    if (url.pathname !== '/data') return json(res, 404, { code: 'NOT_FOUND', message: url.pathname });
    const offset = Number(url.searchParams.get('offset'));
    const length = Number(url.searchParams.get('length'));
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 1 || length > MAX_RANGE) return json(res, 400, { code: 'INVALID_INPUT', message: 'offset and length (1..64 MiB) are required' });
    const { size } = await sourceIdentity(options.path);
    const end = Math.min(size, offset + length);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': Math.max(0, end - offset) });
    if (end <= offset) return res.end();
    const stream = createReadStream(options.path, { start: offset, end: end - 1, highWaterMark: 1024 * 1024 });
    stream.on('data', (chunk) => (bytesServed += chunk.length));
    await pipeline(stream, res);
  };
  const server = createServer((req, res) => {
    touch();
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) json(res, 500, { code: 'INTERNAL', message: (err as Error).message });
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 30_000;
  const close = async () => {
    if (closed) return;
    closed = true;
    clearTimeout(idle);
    const done = new Promise<void>((resolve) => server.close(() => resolve()));
    server.closeAllConnections();
    await done;
  };
  const touch = () => {
    clearTimeout(idle);
    if (closed) return;
    idle = setTimeout(() => void close(), idleMs);
    idle.unref();
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: options.bind, port: 0 }, () => resolve());
  });
  touch();
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${host}:${address.port}`,
    token,
    get bytesServed() {
      return bytesServed;
    },
    get closed() {
      return closed;
    },
    close,
  };
}
