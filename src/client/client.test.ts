// The client over a list of controllers (OFFSHOOT_URL=URL1,URL2): a request
// goes to the next controller when one cannot be reached, sticks to the one
// that answered, and fails with DAEMON_UNREACHABLE naming every URL when none
// answers; a controller's error answer is not retried elsewhere. Against real
// HTTP servers on loopback, one of them closed.
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { OffshootClient } from './client.ts';

async function listen(name: string, status = 200): Promise<{ url: string; server: Server; hits: string[] }> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(`${req.method} ${req.url} ${req.headers.authorization}`);
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(status === 200 ? { ok: true, version: name } : { code: 'BUSY', message: `busy on ${name}`, details: {} }));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, server, hits };
}

/** A URL nothing listens on (a port just released). */
async function deadUrl(): Promise<string> {
  const { url, server } = await listen('gone');
  await new Promise<void>((r) => server.close(() => r()));
  return url;
}

describe('OffshootClient over several controllers', () => {
  const servers: Server[] = [];
  afterEach(async () => {
    for (const s of servers.splice(0)) await new Promise<void>((r) => s.close(() => r()));
  });

  it('asks the next controller when one is down, then keeps to the one that answered', async () => {
    const b = await listen('b');
    servers.push(b.server);
    const client = new OffshootClient({ url: `${await deadUrl()}, ${b.url}/`, token: 't' });
    expect(await client.health()).toEqual({ ok: true, version: 'b' });
    expect(client.url).toBe(b.url);
    // A POST that never reached the dead controller is sent to the next one too.
    await client.call('POST', '/vms', { name: 'x' });
    expect(b.hits).toEqual(['GET /health Bearer t', 'POST /vms Bearer t']);
  });

  it('names every controller when none answers', async () => {
    const urls = [await deadUrl(), await deadUrl()];
    await expect(new OffshootClient({ url: urls.join(','), token: 't' }).health()).rejects.toMatchObject({ code: 'DAEMON_UNREACHABLE', details: { url: urls.join(', ') } });
  });

  it('returns a controller\'s error answer as it is, without asking another', async () => {
    const a = await listen('a', 409);
    const b = await listen('b');
    servers.push(a.server, b.server);
    await expect(new OffshootClient({ url: `${a.url},${b.url}`, token: 't' }).call('POST', '/vms/x/fork', {})).rejects.toMatchObject({ code: 'BUSY', status: 409 });
    expect(b.hits).toEqual([]);
  });
});
