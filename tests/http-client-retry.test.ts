// The agent protocol's HTTP client goes again when a connection is dropped
// before an answer (src/protocol/http-client.ts): a proxy in front of a
// served fake agent closes the first connections as soon as a request
// arrives (as an agent closing an idle keep-alive connection does); up to
// DROPPED_RETRIES drops the call succeeds, one more and it is HOST_UNREACHABLE.
import { createConnection, createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { DROPPED_RETRIES, FakeAgent, httpAgentClient } from '../src/protocol/index.ts';
import { serveAgent } from './fake-fleet.ts';

const TOKEN = 't'.repeat(43);

/** A TCP proxy to `port` that drops the first `drops` connections once their request arrives. */
async function droppingProxy(port: number, drops: number): Promise<{ url: string; dropped: () => number; close: () => Promise<void> }> {
  let dropped = 0;
  const server: Server = createServer((socket) => {
    if (dropped < drops) {
      dropped++;
      socket.once('data', () => socket.destroy());
      return;
    }
    const upstream = createConnection({ host: '127.0.0.1', port });
    socket.pipe(upstream).pipe(socket);
    const end = () => {
      socket.destroy();
      upstream.destroy();
    };
    socket.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    dropped: () => dropped,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('agent HTTP client: dropped connections', () => {
  const closers: Array<() => Promise<void>> = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
  });

  it(`goes again up to ${DROPPED_RETRIES} times when a connection is dropped before the answer, then the host is unreachable`, async () => {
    const served = await serveAgent(new FakeAgent({ hostId: 'fake-drops' }), TOKEN);
    closers.push(served.close);
    const upTo = await droppingProxy(served.port, DROPPED_RETRIES);
    closers.push(upTo.close);
    const client = httpAgentClient({ hostName: 'drops', url: upTo.url, token: TOKEN, epoch: () => 0 });
    expect((await client.hostInfo({})).hostId).toBe('fake-drops');
    expect(upTo.dropped()).toBe(DROPPED_RETRIES);

    const more = await droppingProxy(served.port, DROPPED_RETRIES + 1);
    closers.push(more.close);
    const failing = httpAgentClient({ hostName: 'drops', url: more.url, token: TOKEN, epoch: () => 0 });
    await expect(failing.hostInfo({})).rejects.toMatchObject({ code: 'HOST_UNREACHABLE', details: { host: 'drops' } });
    expect(more.dropped()).toBe(DROPPED_RETRIES + 1);
  });
});
