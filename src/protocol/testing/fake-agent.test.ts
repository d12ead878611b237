// The fake agent passes the agent contract (and the mobility calls' contract), in process and over HTTP on
// loopback (which also tests the HTTP transport: auth, epochs, errors).
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { describe, expect, it } from 'vitest';
import { OffshootError } from '../../common/index.ts';
import { inProcessClient } from '../client.ts';
import { runAgentContract } from '../contract.ts';
import type { AgentContractTarget } from '../contract.ts';
import { runMobilityContract } from '../contract-mobility.ts';
import { agentHttpApp } from '../http-server.ts';
import { httpAgentClient } from '../http-client.ts';
import { FakeAgent } from './fake-agent.ts';

const allowed = '/fake/images';
const image = `${allowed}/tiny.raw`;

function fake(): FakeAgent {
  return new FakeAgent({ allowedRoots: [allowed], hostFiles: [image] });
}

async function inProcessTarget(): Promise<AgentContractTarget> {
  const agent = fake();
  let epoch = 2;
  return {
    client: inProcessClient(agent.endpoint, { hostName: 'fake', epoch: () => epoch }),
    withEpoch: (e) => inProcessClient(agent.endpoint, { hostName: 'fake', epoch: () => e }),
    allowedImage: image,
    forbiddenPath: '/etc/shadow',
    bootTimeoutMs: 1000,
    dispose: async () => {
      epoch = 0;
    },
  };
}

async function serveOverHttp(agent: FakeAgent, token: string) {
  const app = agentHttpApp(agent.endpoint, { token });
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, () => resolve(s));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { url, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

async function httpTarget(): Promise<AgentContractTarget> {
  const agent = fake();
  const token = 'a'.repeat(43);
  const http = await serveOverHttp(agent, token);
  return {
    client: httpAgentClient({ hostName: 'fake-http', url: http.url, token, epoch: () => 2 }),
    withEpoch: (e) => httpAgentClient({ hostName: 'fake-http', url: http.url, token, epoch: () => e }),
    allowedImage: image,
    forbiddenPath: '/etc/shadow',
    bootTimeoutMs: 1000,
    dispose: http.close,
  };
}

runAgentContract('fake agent, in process', inProcessTarget);
runAgentContract('fake agent, over HTTP', httpTarget);
runMobilityContract('fake agent, in process', inProcessTarget);
runMobilityContract('fake agent, over HTTP', httpTarget);

describe('agent protocol over HTTP', () => {
  it('refuses a missing or wrong credential, names an unreachable host, and never hangs on a silent one', async () => {
    const agent = fake();
    const http = await serveOverHttp(agent, 'b'.repeat(43));
    try {
      const wrong = httpAgentClient({ hostName: 'h1', url: http.url, token: 'c'.repeat(43), epoch: () => 1 });
      const err = await wrong.hostInfo({}).catch((e: unknown) => e as OffshootError);
      expect((err as OffshootError).code).toBe('UNAUTHORIZED');
      expect((err as OffshootError).details.host).toBe('h1');
    } finally {
      await http.close();
    }
    const down = httpAgentClient({ hostName: 'h2', url: http.url, token: 'b'.repeat(43), epoch: () => 1 });
    const gone = await down.hostInfo({}).catch((e: unknown) => e as OffshootError);
    expect((gone as OffshootError).code).toBe('HOST_UNREACHABLE');
    expect((gone as OffshootError).message).toContain('h2');
    // A server that accepts the connection but never answers.
    const { createServer } = await import('node:net');
    const silent = createServer(() => undefined);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as AddressInfo).port;
    try {
      const slow = httpAgentClient({ hostName: 'h3', url: `http://127.0.0.1:${port}`, token: 'b'.repeat(43), epoch: () => 1, timeoutMs: 300 });
      const hung = await slow.hostInfo({}).catch((e: unknown) => e as OffshootError);
      expect((hung as OffshootError).code).toBe('HOST_UNREACHABLE');
    } finally {
      silent.close();
    }
  });

  it('calls a host that answers garbage an AGENT_PROTOCOL error', async () => {
    const dir = '/tmp/osh-proto-garbage';
    mkdirSync(dir, { recursive: true });
    writeFileSync(`${dir}/x`, 'x');
    const { createServer } = await import('node:http');
    const server = createServer((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ hello: 'world' }));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const client = httpAgentClient({ hostName: 'weird', url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, token: 'x'.repeat(43), epoch: () => 1 });
      const err = await client.hostInfo({}).catch((e: unknown) => e as OffshootError);
      expect((err as OffshootError).code).toBe('AGENT_PROTOCOL');
    } finally {
      server.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('generates an OpenAPI document with one operation per call', async () => {
    const app = agentHttpApp(fake().endpoint, { token: 'd'.repeat(43) });
    const doc = (await (await app.request('/v1/openapi.json')).json()) as { paths: Record<string, { post: { operationId: string } }> };
    expect(doc.paths['/v1/startVm']?.post.operationId).toBe('startVm');
    expect(Object.keys(doc.paths).length).toBeGreaterThan(40);
  });
});
