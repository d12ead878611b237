// Two fake agents in one process pass the migration contract, in process and
// over HTTP on loopback (the real agents pass it on lab hosts:
// tests/e2e/migration-contract.test.ts).
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { inProcessClient } from '../client.ts';
import { runMigrationContract } from '../contract-migration.ts';
import { agentHttpApp } from '../http-server.ts';
import { httpAgentClient } from '../http-client.ts';
import { FakeAgent } from './fake-agent.ts';

function pair() {
  const source = new FakeAgent({ hostId: 'fake-src', managementAddress: '10.254.1.1', migrateMs: 400 });
  const destination = new FakeAgent({ hostId: 'fake-dst', managementAddress: '10.254.1.2', migrateMs: 400 });
  return { source, destination };
}

runMigrationContract('two fake agents, in process', async () => {
  const { source, destination } = pair();
  const s = inProcessClient(source.endpoint, { hostName: 'fake-src', epoch: () => 1 });
  const d = inProcessClient(destination.endpoint, { hostName: 'fake-dst', epoch: () => 1 });
  await s.attach({ hostId: 'fake-src', epoch: 1 });
  await d.attach({ hostId: 'fake-dst', epoch: 1 });
  return { source: s, destination: d, sourceAddress: '10.254.1.1', destinationAddress: '10.254.1.2', bootTimeoutMs: 1000, dispose: async () => undefined };
});

async function overHttp(agent: FakeAgent, name: string) {
  const token = 'm'.repeat(43);
  const app = agentHttpApp(agent.endpoint, { token });
  const server = await new Promise<ReturnType<typeof serve>>((resolve) => {
    const s = serve({ fetch: app.fetch, hostname: '127.0.0.1', port: 0 }, () => resolve(s));
  });
  const client = httpAgentClient({ hostName: name, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, token, epoch: () => 1 });
  await client.attach({ hostId: name, epoch: 1 });
  return { client, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

runMigrationContract('two fake agents, over HTTP', async () => {
  const { source, destination } = pair();
  const s = await overHttp(source, 'fake-src');
  const d = await overHttp(destination, 'fake-dst');
  return { source: s.client, destination: d.client, sourceAddress: '10.254.1.1', destinationAddress: '10.254.1.2', bootTimeoutMs: 1000, dispose: async () => void (await Promise.all([s.close(), d.close()])) };
});
