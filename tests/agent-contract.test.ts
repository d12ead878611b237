// The agent contract (src/protocol/contract.ts) against the real agent: the
// AgentService over this machine's QEMU in process (as `offshoot serve`
// reaches its own host), and `offshoot agent serve` over HTTP on loopback
// (as a control plane reaches any other host). The fake agent passes the
// same suites in src/protocol/testing/fake-agent.test.ts. The mobility calls
// have their own suite (src/protocol/contract-mobility.ts) on the same targets.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startAgentDaemon } from '../src/api/index.ts';
import { startLocalHost } from '../src/api/local-host.ts';
import { silentLogger } from '../src/common/index.ts';
import { httpAgentClient, inProcessClient } from '../src/protocol/index.ts';
import { runAgentContract } from '../src/protocol/contract.ts';
import type { AgentContractTarget } from '../src/protocol/contract.ts';
import { runMobilityContract } from '../src/protocol/contract-mobility.ts';

function scratch(label: string) {
  const root = mkdtempSync(`/tmp/osh-contract-${label}-`);
  const memoryDir = mkdtempSync(`/dev/shm/osh-contract-${label}-`);
  const images = join(root, 'images');
  mkdirSync(images);
  const image = join(images, 'tiny.raw');
  writeFileSync(image, Buffer.alloc(1024 * 1024));
  return { root, memoryDir, images, image, remove: () => [root, memoryDir].forEach((d) => rmSync(d, { recursive: true, force: true })) };
}

async function inProcessTarget(): Promise<AgentContractTarget> {
  const s = scratch('local');
  const stack = await startLocalHost({ home: join(s.root, 'home'), memoryDir: s.memoryDir, allowImages: [s.images], logger: silentLogger });
  return {
    client: inProcessClient(stack.service.endpoint, { hostName: 'local', epoch: () => 2 }),
    withEpoch: (e) => inProcessClient(stack.service.endpoint, { hostName: 'local', epoch: () => e }),
    allowedImage: s.image,
    forbiddenPath: '/etc/hostname',
    bootTimeoutMs: 120_000,
    dispose: async () => {
      await stack.close();
      s.remove();
    },
  };
}

async function httpTarget(): Promise<AgentContractTarget> {
  const s = scratch('http');
  const agent = await startAgentDaemon({ home: join(s.root, 'home'), listen: '127.0.0.1:0', memoryDir: s.memoryDir, allowImages: [s.images], logger: silentLogger });
  return {
    client: httpAgentClient({ hostName: 'http-agent', url: agent.url, token: agent.token, epoch: () => 2 }),
    withEpoch: (e) => httpAgentClient({ hostName: 'http-agent', url: agent.url, token: agent.token, epoch: () => e }),
    allowedImage: s.image,
    forbiddenPath: '/etc/hostname',
    bootTimeoutMs: 120_000,
    dispose: async () => {
      await agent.close();
      s.remove();
    },
  };
}

runAgentContract('real agent, in process', inProcessTarget);
runAgentContract('real agent, over HTTP (offshoot agent serve)', httpTarget);
runMobilityContract('real agent, in process', inProcessTarget);
runMobilityContract('real agent, over HTTP (offshoot agent serve)', httpTarget);
