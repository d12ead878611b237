// Test and bench helper: one TCP stream of N bytes from a client in one
// namespace to a server in another, each a plain Node process entered into
// its namespace with nsenter. The server reports how many bytes it received,
// from which address, and the time from the first byte to the end; the
// client reports the address it sent from.
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { spawnInNamespace } from './namespaces.ts';

const SERVER = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const server = net.createServer((socket) => {
  let bytes = 0, first = 0;
  socket.on('data', (chunk) => { if (!first) first = performance.now(); bytes += chunk.length; });
  socket.on('end', () => {
    const ms = performance.now() - first;
    process.stdout.write(JSON.stringify({ bytes, ms, remoteAddress: socket.remoteAddress, localAddress: socket.localAddress }) + '\\n');
    socket.end(); server.close();
  });
});
server.listen(Number(port), host, () => process.stdout.write('listening\\n'));
`;

const CLIENT = `
const net = require('node:net');
const [host, port, total] = process.argv.slice(1);
const buf = Buffer.alloc(1 << 20, 7);
const socket = net.connect({ host, port: Number(port) }, () => {
  let left = Number(total);
  const pump = () => {
    while (left > 0) {
      const n = Math.min(left, buf.length);
      left -= n;
      if (!socket.write(n === buf.length ? buf : buf.subarray(0, n))) return socket.once('drain', pump);
    }
    socket.end();
  };
  pump();
});
socket.on('close', () => process.stdout.write(JSON.stringify({ localAddress: socket.localAddress }) + '\\n'));
`;

export interface TcpTransferResult {
  bytes: number;
  /** Server side: first byte to end of stream. */
  ms: number;
  mibPerSecond: number;
  /** The client's address as the server saw it. */
  serverSawFrom: string;
  /** The address the server accepted on. */
  serverAddress: string;
  clientAddress: string;
}

function firstLine(child: ReturnType<typeof spawnInNamespace>): Promise<string> {
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
    lines.once('line', (line) => resolve(line));
    child.once('exit', (code) => reject(new Error(`process exited (${code}) before answering: ${err}`)));
  });
}

/** Sends `bytes` over one TCP connection from `client.namespace` to `server.address:port` in `server.namespace`. */
export async function tcpTransfer(request: { server: { namespace: string; address: string }; clientNamespace: string; port: number; bytes: number }): Promise<TcpTransferResult> {
  const server = spawnInNamespace(request.server.namespace, [process.execPath, '-e', SERVER, request.server.address, String(request.port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const ready = await firstLine(server);
    if (ready !== 'listening') throw new Error(`TCP server said "${ready}"`);
    const report = firstLine(server);
    const client = spawnInNamespace(request.clientNamespace, [process.execPath, '-e', CLIENT, request.server.address, String(request.port), String(request.bytes)], { stdio: ['ignore', 'pipe', 'pipe'] });
    const [serverLine, clientLine] = await Promise.all([report, firstLine(client)]);
    const got = JSON.parse(serverLine) as { bytes: number; ms: number; remoteAddress: string; localAddress: string };
    const sent = JSON.parse(clientLine) as { localAddress: string };
    return {
      bytes: got.bytes,
      ms: got.ms,
      mibPerSecond: got.bytes / 2 ** 20 / (got.ms / 1000),
      serverSawFrom: got.remoteAddress,
      serverAddress: got.localAddress,
      clientAddress: sent.localAddress,
    };
  } finally {
    if (server.exitCode === null) {
      server.kill('SIGKILL');
      await once(server, 'exit').catch(() => undefined);
    }
  }
}
