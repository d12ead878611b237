// The per-operation data path on the real kernel: two bare network
// namespaces joined by a veth stand for two hosts. One end is opened the way
// an agent does it (a child process inside the namespace, no `ip -n`), the
// other with `namespace`. Checks: TCP between the per-operation addresses
// goes over the VXLAN link (its counters, and the management device carried
// exactly the encapsulated frames), concurrent paths differ, a slot taken by
// another operation is a conflict that leaves it alone, open is idempotent
// and all-or-nothing, teardown leaves nothing and can repeat, and leftovers
// of a crash are reaped; the /31's route carries quickack; an end closed by
// its known link gives its last counters.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { closeDataPath, closeDataPathEnd, linkCounters, listDataPaths, newPskKey, openDataPath, planDataPath, planForSlot, reapDataPaths, runIp } from './index.ts';
import type { DataPathEnd, DataPathPlan } from './index.ts';
import { makeHostPair, runTsInNamespace } from './testing/namespaces.ts';
import type { HostPair } from './testing/namespaces.ts';
import { tcpTransfer } from './testing/tcp.ts';

const PATH_CLI = join(import.meta.dirname, 'testing', 'path-cli.ts');
const prefix = `ofn${randomBytes(2).toString('hex')}`;
const subnet = `10.213.${200 + (randomBytes(1)[0] as number) % 50}.0/24`;
/** VXLAN's outer headers: Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8. */
const ENCAP_BYTES = 50;

let hosts: HostPair;
let keysRoot: string;
const keysOf = (side: 'a' | 'b') => join(keysRoot, side);
const hostOf = (side: 'a' | 'b') => ({ namespace: hosts[side].namespace, credentialsRoot: keysOf(side) });

/** Opens the server end on b inside its namespace (as its agent would) and the client end on a with `ip -n`. */
async function openBoth(plan: DataPathPlan, key: string): Promise<{ server: DataPathEnd; client: DataPathEnd }> {
  const [serverOut, client] = await Promise.all([
    runTsInNamespace(hosts.b.namespace, PATH_CLI, ['open', JSON.stringify({ plan, role: 'server', pskKey: key, credentialsRoot: keysOf('b') })]),
    openDataPath({ plan, role: 'client', pskKey: key, ...hostOf('a') }),
  ]);
  return { server: JSON.parse(serverOut) as DataPathEnd, client };
}

async function closeBoth(operationId: string): Promise<void> {
  await Promise.all([closeDataPath({ operationId, ...hostOf('a') }), closeDataPath({ operationId, ...hostOf('b') })]);
}

async function addressesOf(namespace: string): Promise<string> {
  return runIp(['-4', '-o', 'addr', 'show'], { namespace });
}

beforeAll(async () => {
  hosts = await makeHostPair(prefix, subnet);
  keysRoot = mkdtempSync(`/tmp/${prefix}-keys-`);
});

afterAll(async () => {
  await hosts?.remove();
  if (keysRoot) rmSync(keysRoot, { recursive: true, force: true });
});

describe('per-operation data path', () => {
  it('carries TCP between the per-operation addresses over its VXLAN link, then leaves nothing', async () => {
    const plan = planDataPath({ operationId: 'mig-1', serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address });
    const key = newPskKey();
    const { server, client } = await openBoth(plan, key);

    expect(server).toMatchObject({ operationId: 'mig-1', role: 'server', vni: plan.vni, linkName: plan.linkName, device: 'mgmt0', mtu: 1450, localAddress: plan.server.address, remoteAddress: plan.client.address, localManagementAddress: hosts.b.address });
    expect(client).toMatchObject({ role: 'client', vni: plan.vni, device: 'mgmt0', mtu: 1450, localAddress: plan.client.address, remoteAddress: plan.server.address });
    expect(server.localAddress).not.toBe(hosts.b.address);
    // One-time credentials: private folder, the same key at both ends, the client names the user.
    expect(server.credential).toMatchObject({ id: 'psk-mig-1', endpoint: 'server', dir: join(keysOf('b'), 'mig-1') });
    expect(client.credential).toMatchObject({ endpoint: 'client', username: 'offshoot' });
    for (const end of [server, client]) {
      expect(statSync(end.credential.dir).mode & 0o777).toBe(0o700);
      expect(statSync(join(end.credential.dir, 'keys.psk')).mode & 0o777).toBe(0o600);
      expect(readFileSync(join(end.credential.dir, 'keys.psk'), 'utf8')).toBe(`offshoot:${key}\n`);
    }

    const before = { vxlan: await linkCounters(plan.linkName, hostOf('a')), mgmt: await linkCounters('mgmt0', hostOf('a')), serverVxlan: await linkCounters(plan.linkName, hostOf('b')) };
    const bytes = 64 * 2 ** 20;
    const sent = await tcpTransfer({ server: { namespace: hosts.b.namespace, address: server.localAddress }, clientNamespace: hosts.a.namespace, port: 7411, bytes });
    const after = { vxlan: await linkCounters(plan.linkName, hostOf('a')), mgmt: await linkCounters('mgmt0', hostOf('a')), serverVxlan: await linkCounters(plan.linkName, hostOf('b')) };

    expect(sent.bytes).toBe(bytes);
    expect(sent.serverSawFrom).toBe(client.localAddress);
    expect(sent.serverAddress).toBe(server.localAddress);
    const vxlanTx = after.vxlan.txBytes - before.vxlan.txBytes;
    const vxlanTxPackets = after.vxlan.txPackets - before.vxlan.txPackets;
    expect(vxlanTx).toBeGreaterThan(bytes);
    expect(after.serverVxlan.rxBytes - before.serverVxlan.rxBytes).toBeGreaterThan(bytes);
    // The management device carried the VXLAN frames plus their outer headers, and nothing else
    // of size: had the stream gone over the management addresses, it would be here unencapsulated.
    const mgmtTx = after.mgmt.txBytes - before.mgmt.txBytes;
    const encapsulated = vxlanTx + ENCAP_BYTES * vxlanTxPackets;
    expect(mgmtTx).toBeGreaterThanOrEqual(encapsulated);
    expect(mgmtTx - encapsulated).toBeLessThan(64 * 1024);

    // The /31's route is the path's own, with quickack (no delayed ACKs for a Nagle-bound sender to wait for).
    expect(await runIp(['-4', 'route', 'show', 'dev', plan.linkName], hostOf('a'))).toMatch(new RegExp(`^${plan.subnet.replace(/\./g, '\\.')} .*src ${client.localAddress}.*quickack 1`, 'm'));

    // The client's end closed by its known link: its last counters, in one go.
    const closed = await closeDataPathEnd({ operationId: 'mig-1', linkName: plan.linkName, ...hostOf('a') });
    expect(closed).toMatchObject({ removedLinks: [plan.linkName], removedCredential: true });
    expect(closed.counters?.txBytes).toBeGreaterThanOrEqual(after.vxlan.txBytes);
    expect(await closeDataPathEnd({ operationId: 'mig-1', linkName: plan.linkName, ...hostOf('a') })).toEqual({ removedLinks: [], removedCredential: false, counters: null });
    await closeBoth('mig-1');
    for (const side of ['a', 'b'] as const) {
      expect(await listDataPaths(hostOf(side))).toEqual({ links: [], credentials: [] });
      expect(await addressesOf(hosts[side].namespace)).not.toContain('198.18.');
    }
    // Idempotent: a second teardown finds nothing and does not fail.
    expect(await closeDataPath({ operationId: 'mig-1', ...hostOf('a') })).toEqual({ removedLinks: [], removedCredential: false });
  });

  it('gives concurrent operations different VNIs and subnets, and refuses a taken slot', async () => {
    const request = { serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address };
    const plans = ['mig-2', 'mig-3'].map((operationId) => planDataPath({ operationId, ...request }));
    const [p2, p3] = plans as [DataPathPlan, DataPathPlan];
    expect(p2.slot).not.toBe(p3.slot);
    const ends = await Promise.all(plans.map((p) => openBoth(p, newPskKey())));
    expect(new Set(ends.map((e) => e.server.vni)).size).toBe(2);
    expect(new Set(ends.map((e) => `${e.server.localAddress}/${e.server.prefixLength}`)).size).toBe(2);
    expect((await listDataPaths(hostOf('a'))).links.map((l) => l.operationId).sort()).toEqual(['mig-2', 'mig-3']);
    for (const [i, e] of ends.entries()) {
      const r = await tcpTransfer({ server: { namespace: hosts.b.namespace, address: e.server.localAddress }, clientNamespace: hosts.a.namespace, port: 7420 + i, bytes: 2 ** 20 });
      expect(r.serverSawFrom).toBe(e.client.localAddress);
    }

    // Another operation planned into mig-2's slot (planned without knowing of it): a conflict; mig-2 is untouched.
    const clash = planForSlot('mig-4', p2.slot, hosts.b.address, hosts.a.address);
    await expect(openDataPath({ plan: clash, role: 'client', pskKey: newPskKey(), ...hostOf('a') })).rejects.toMatchObject({ code: 'DATA_PATH_CONFLICT' });
    // A VNI taken by a VXLAN link that is not a path's: the kernel's own refusal, also a conflict.
    const free = planDataPath({ operationId: 'mig-4', ...request, inUse: [p2.slot, p3.slot] });
    await runIp(['link', 'add', 'foreignvx', 'type', 'vxlan', 'id', String(free.vni), 'dstport', '4789', 'dev', 'mgmt0'], hostOf('a'));
    await expect(openDataPath({ plan: free, role: 'client', pskKey: newPskKey(), ...hostOf('a') })).rejects.toMatchObject({ code: 'DATA_PATH_CONFLICT', message: expect.stringMatching(/A VXLAN device with the specified VNI already exists/) });
    await runIp(['link', 'del', 'foreignvx'], hostOf('a'));
    const listing = await listDataPaths(hostOf('a'));
    expect(listing.links.map((l) => l.operationId).sort()).toEqual(['mig-2', 'mig-3']);
    expect(listing.credentials).toEqual(['mig-2', 'mig-3']);

    await closeBoth('mig-2');
    await closeBoth('mig-3');
    expect((await listDataPaths(hostOf('b'))).links).toEqual([]);
  });

  it('opens idempotently, and a failed open leaves nothing', async () => {
    const plan = planDataPath({ operationId: 'mig-5', serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address });
    const key = newPskKey();
    const first = await openDataPath({ plan, role: 'client', pskKey: key, ...hostOf('a') });
    const again = await openDataPath({ plan, role: 'client', pskKey: key, ...hostOf('a') });
    expect(again).toEqual(first);
    expect((await listDataPaths(hostOf('a'))).links).toHaveLength(1);
    await closeDataPath({ operationId: 'mig-5', ...hostOf('a') });

    // b does not hold a's management address: the open fails and leaves no link, address or key.
    await expect(openDataPath({ plan, role: 'client', pskKey: key, ...hostOf('b') })).rejects.toMatchObject({ code: 'DATA_PATH_FAILED' });
    // A bad key is refused after the link was made: the link goes again.
    await expect(openDataPath({ plan, role: 'server', pskKey: 'not-hex', ...hostOf('b') })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    expect(await listDataPaths(hostOf('b'))).toEqual({ links: [], credentials: [] });
    await expect(openDataPath({ plan: { ...plan, operationId: '../../etc' }, role: 'server', pskKey: key, ...hostOf('b') })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('reaps the leftovers of operations that are gone', async () => {
    const request = { serverManagementAddress: hosts.b.address, clientManagementAddress: hosts.a.address };
    const live = planDataPath({ operationId: 'mig-live', ...request });
    const gone = planDataPath({ operationId: 'mig-gone', ...request, inUse: [live.slot] });
    await openBoth(live, newPskKey());
    // The crashed operation: opened by an agent process that is gone now.
    await runTsInNamespace(hosts.a.namespace, PATH_CLI, ['open', JSON.stringify({ plan: gone, role: 'client', pskKey: newPskKey(), credentialsRoot: keysOf('a') })]);
    // A link made by a crash between creating and labelling it.
    await runIp(['link', 'add', 'ofvx7', 'type', 'vxlan', 'id', '4242', 'dstport', '4789', 'dev', 'mgmt0'], hostOf('a'));

    const listed = await listDataPaths(hostOf('a'));
    expect(listed.links.map((l) => l.operationId).sort()).toEqual([null, 'mig-gone', 'mig-live'].sort());
    const reaped = JSON.parse(await runTsInNamespace(hosts.a.namespace, PATH_CLI, ['reap', JSON.stringify({ live: ['mig-live'], credentialsRoot: keysOf('a') })])) as { removedLinks: string[]; removedCredentials: string[] };
    expect(reaped.removedLinks.sort()).toEqual([gone.linkName, 'ofvx7'].sort());
    expect(reaped.removedCredentials).toEqual(['mig-gone']);
    const left = await listDataPaths(hostOf('a'));
    expect(left.links.map((l) => l.operationId)).toEqual(['mig-live']);
    expect(left.credentials).toEqual(['mig-live']);

    await reapDataPaths({ live: [], ...hostOf('a') });
    await reapDataPaths({ live: [], ...hostOf('b') });
    for (const side of ['a', 'b'] as const) expect(await listDataPaths(hostOf(side))).toEqual({ links: [], credentials: [] });
  });
});
