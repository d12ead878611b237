// The migration contract (src/protocol/contract-migration.ts) against two real
// agents: lab hosts, each `offshoot agent serve` in its own network namespace,
// reached over HTTP; the migration and the disk mirror go over a VXLAN path
// made for each operation, with TLS-PSK. The fake pair passes the same suite
// (src/protocol/testing/fake-migration.test.ts), and the group switch-over
// contract (src/protocol/contract-group.ts) likewise. Nothing of the lab is left.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { agentTokenFile } from '../../src/lab/agent-command.ts';
import { labDown, labUp } from '../../src/lab/lab.ts';
import { httpAgentClient } from '../../src/protocol/index.ts';
import { runMigrationContract } from '../../src/protocol/contract-migration.ts';
import type { MigrationContractTarget } from '../../src/protocol/contract-migration.ts';
import { runGroupContract } from '../../src/protocol/contract-group.ts';

const prefix = `omc${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${150 + ((randomBytes(1)[0] as number) % 30)}.0/24`;

async function labPair(): Promise<MigrationContractTarget> {
  const dir = mkdtempSync(`/tmp/${prefix}-`);
  const lab = await labUp(2, { dir, prefix, subnet }, dir);
  const client = (i: number) => {
    const h = lab.hosts[i];
    if (!h) throw new Error('the lab has fewer hosts than asked');
    return httpAgentClient({ hostName: h.name, url: h.url, token: readFileSync(agentTokenFile(h.home), 'utf8').trim(), epoch: () => 1, timeoutMs: 60_000 });
  };
  const source = client(0);
  const destination = client(1);
  await source.attach({ hostId: `${prefix}-a`, epoch: 1 });
  await destination.attach({ hostId: `${prefix}-b`, epoch: 1 });
  return {
    source,
    destination,
    sourceAddress: lab.hosts[0]?.address ?? '',
    destinationAddress: lab.hosts[1]?.address ?? '',
    bootTimeoutMs: 150_000,
    keepDirtying: async (agent, vmId) => {
      // 4 MiB of the guest's tmpfs rewritten in place without a pause: every dirty sync finds pages of it. (With a
      // 50 ms sleep between rewrites a 4 ms pass fell in a sleep, its sync found nothing, and it completed.)
      const loop = '(while true; do dd if=/dev/zero of=/tmp/contract-dirty bs=1M count=4 conv=notrunc 2>/dev/null; done) >/dev/null 2>&1 & echo $! > /tmp/contract-dirty.pid';
      await agent.exec({ vmId, path: '/bin/sh', args: ['-c', loop] });
      return async () => void (await agent.exec({ vmId, path: '/bin/sh', args: ['-c', 'kill $(cat /tmp/contract-dirty.pid)'] }));
    },
    dispose: async () => {
      await labDown({ dir, prefix }).catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

runMigrationContract('two real agents on lab hosts', labPair);
// The group switch-over calls (holdAfter, startIncoming, revertOutgoing, setMigrationParameters).
runGroupContract('two real agents on lab hosts', labPair);
