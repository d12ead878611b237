// The Fleet against a real SQLite inventory and fake agents served over HTTP
// on loopback: adding a host checks its agent, a silent host becomes
// unreachable after its lease and comes back with a new epoch, a restarted
// agent is noticed, the old epoch is refused by the agent, VM exits arrive,
// and placement picks a ready host with room.
import { mkdtempSync, rmSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { OffshootError } from '../src/common/index.ts';
import { httpAgentClient } from '../src/protocol/index.ts';
import type { AgentEvent } from '../src/protocol/index.ts';
import { FakeAgent } from '../src/protocol/index.ts';
import { KyselyInventory } from '../src/store/index.ts';
import { Fleet } from '../src/vm/index.ts';
import type { HostRecord } from '../src/vm/index.ts';
import { serveAgent as servedAgent } from './fake-fleet.ts';

const TOKEN = 'k'.repeat(43);

const serveAgent = (agent: FakeAgent, port = 0) => servedAgent(agent, TOKEN, port);

async function until(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('Fleet', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.reverse()) await c();
    cleanups.length = 0;
  });

  async function setup(vmsOn: (hostId: string) => number = () => 0) {
    const dir = mkdtempSync('/tmp/osh-fleet-');
    const inventory = await KyselyInventory.open(`${dir}/inventory.sqlite`);
    const local = new FakeAgent({ hostId: 'local-agent' });
    const fleet = new Fleet({ inventory: inventory.hosts, vmsOn: async (id) => vmsOn(id), local: { name: 'home', endpoint: local.endpoint }, heartbeatMs: 50, leaseMs: 300 });
    const seen = { lost: [] as string[], back: [] as string[], exits: [] as string[] };
    fleet.listen({
      hostLost: (h) => seen.lost.push(h.name),
      hostBack: (h, why) => seen.back.push(`${h.name}:${why}`),
      vmExited: (h: HostRecord, e: Extract<AgentEvent, { type: 'vm.exit' }>) => seen.exits.push(`${h.name}:${e.vmId}`),
      resync: () => undefined,
    });
    await fleet.start();
    cleanups.push(async () => {
      await fleet.close();
      await inventory.close();
      rmSync(dir, { recursive: true, force: true });
    });
    return { fleet, inventory, local, seen };
  }

  it('registers its own host in process, and adds a remote one only when its agent answers the protocol', async () => {
    const { fleet } = await setup();
    expect((await fleet.list()).map((h) => [h.name, h.url, h.state])).toEqual([['home', 'local:', 'ready']]);
    const remote = new FakeAgent();
    const served = await serveAgent(remote);
    cleanups.push(served.close);
    const host = await fleet.add({ name: 'lab1', url: served.url, token: TOKEN });
    expect(host.epoch).toBe(1);
    expect(remote.current()).toBe(1);
    expect((await fleet.list()).find((h) => h.name === 'lab1')).not.toHaveProperty('token');
    await expect(fleet.add({ name: 'lab1', url: served.url, token: TOKEN })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    await expect(fleet.add({ name: 'lab2', url: served.url, token: 'w'.repeat(43) })).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
    const other = await serveAgent(new FakeAgent());
    cleanups.push(other.close);
    await expect(fleet.add({ name: 'lab2', url: other.url, token: 'w'.repeat(43) })).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
    await expect(fleet.add({ name: 'lab3', url: 'http://127.0.0.1:1', token: TOKEN })).rejects.toMatchObject({ code: 'HOST_UNREACHABLE' });
    await expect(fleet.add({ name: '../x', url: other.url, token: TOKEN })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    expect((await fleet.list()).map((h) => h.name).sort()).toEqual(['home', 'lab1']);
  });

  it('marks a silent host unreachable after its lease, and takes it back with a new epoch that fences the old one', async () => {
    const { fleet, seen } = await setup();
    const remote = new FakeAgent();
    const served = await serveAgent(remote);
    const host = await fleet.add({ name: 'lab1', url: served.url, token: TOKEN });
    await served.close();
    await until(async () => (await fleet.resolve('lab1')).state === 'unreachable');
    expect(seen.lost[0]).toBe('lab1');
    const again = await serveAgent(remote, served.port);
    cleanups.push(again.close);
    await until(() => seen.back.length > 0);
    const back = await fleet.resolve('lab1');
    // A new epoch (a loaded machine can miss a heartbeat again right after, and take one more).
    expect(back.epoch).toBeGreaterThan(host.epoch);
    expect(seen.back[0]).toBe('lab1:returned');
    const stale = httpAgentClient({ hostName: 'lab1', url: again.url, token: TOKEN, epoch: () => host.epoch });
    await expect(stale.pauseVm({ vmId: '6f6f6f6f-0000-4000-8000-000000000001' })).rejects.toMatchObject({ code: 'STALE_EPOCH' });
  });

  it('notices a restarted agent, and hears of VM exits', async () => {
    const { fleet, seen } = await setup();
    const remote = new FakeAgent();
    const served = await serveAgent(remote);
    cleanups.push(served.close);
    const host = await fleet.add({ name: 'lab1', url: served.url, token: TOKEN });
    const client = fleet.agent(host.id);
    const spec = await client.prepareVm({ vmId: '6f6f6f6f-0000-4000-8000-000000000009', name: 'v', vcpus: 1, memoryMiB: 128, boot: { kind: 'default-guest' }, disks: [], network: 'none' });
    const op = await client.startVm({ operationId: '6f6f6f6f-0000-4000-8000-0000000000aa', vmId: '6f6f6f6f-0000-4000-8000-000000000009', name: 'v', spec });
    await until(async () => (await client.getOperation({ operationId: op.operationId, afterSeq: 0, waitMs: 0 })).operation.state === 'succeeded');
    remote.crash('6f6f6f6f-0000-4000-8000-000000000009');
    await until(() => seen.exits.includes('lab1:6f6f6f6f-0000-4000-8000-000000000009'));
    remote.restart();
    await until(() => seen.back.includes('lab1:agent-restarted'));
  });

  it('places on a ready host with room, never on a drained one, and refuses to remove a host with VMs', async () => {
    let vms = 0;
    const { fleet } = await setup(() => vms);
    const remote = new FakeAgent();
    const served = await serveAgent(remote);
    cleanups.push(served.close);
    const host = await fleet.add({ name: 'lab1', url: served.url, token: TOKEN });
    expect((await fleet.place(256, 'lab1')).id).toBe(host.id);
    await fleet.setAdminState('lab1', 'draining');
    await expect(fleet.place(256, 'lab1')).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
    expect((await fleet.place(256)).name).toBe('home');
    vms = 1;
    await expect(fleet.remove('lab1')).rejects.toBeInstanceOf(OffshootError);
    vms = 0;
    await fleet.remove('lab1');
    await expect(fleet.resolve('lab1')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });
});
