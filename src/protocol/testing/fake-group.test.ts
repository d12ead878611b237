// Two fake agents in one process pass the group switch-over contract (the
// real agents pass it on lab hosts: tests/e2e/migration-contract.test.ts).
import { inProcessClient } from '../client.ts';
import { runGroupContract } from '../contract-group.ts';
import { FakeAgent } from './fake-agent.ts';

runGroupContract('two fake agents, in process', async () => {
  const source = new FakeAgent({ hostId: 'fake-gsrc', managementAddress: '10.254.2.1', migrateMs: 400 });
  const destination = new FakeAgent({ hostId: 'fake-gdst', managementAddress: '10.254.2.2', migrateMs: 400 });
  const s = inProcessClient(source.endpoint, { hostName: 'fake-gsrc', epoch: () => 1 });
  const d = inProcessClient(destination.endpoint, { hostName: 'fake-gdst', epoch: () => 1 });
  await s.attach({ hostId: 'fake-gsrc', epoch: 1 });
  await d.attach({ hostId: 'fake-gdst', epoch: 1 });
  return { source: s, destination: d, sourceAddress: '10.254.2.1', destinationAddress: '10.254.2.2', bootTimeoutMs: 1000, dispose: async () => undefined };
});
