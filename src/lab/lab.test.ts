// End-to-end test of the lab on the real kernel with real agents: `up 2`
// makes two hosts whose agents answer the agent protocol at their own
// addresses from the root namespace, each agent inside its host's namespace;
// a per-operation data path between the two hosts carries packets over its
// VXLAN link; `up` again leaves running agents alone; an agent killed with
// SIGKILL is restarted by the next `up`; bad options are refused before
// anything is made; `down` leaves no process, namespace, link or file. (VMs on
// lab hosts, driven by a control plane, are in tests/e2e/hosts.test.ts.)
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { isProcessAlive } from '../common/index.ts';
import { closeDataPath, ipJson, linkCounters, listDataPaths, listNamespaces, newPskKey, openDataPath, planDataPath } from '../net/index.ts';
import { agentClient } from './agent-command.ts';
import { processInNamespace } from './agent-process.ts';
import { labDown, labStatus, labUp } from './lab.ts';
import type { UpResult } from './lab.ts';

const execFileAsync = promisify(execFile);
const prefix = `olt${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${150 + ((randomBytes(1)[0] as number) % 40)}.0/24`;
const dir = mkdtempSync(`/tmp/${prefix}-lab-`);
const options = { dir, prefix, subnet };

async function labNames(): Promise<string[]> {
  const links = (await ipJson<Array<{ ifname: string }>>(['link', 'show'])).map((l) => l.ifname);
  return [...(await listNamespaces()), ...links].filter((n) => n.startsWith(`${prefix}-`));
}

afterAll(async () => {
  await labDown(options).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
});

describe('lab', () => {
  let up: UpResult;

  it('brings up two hosts whose agents answer from the root namespace, each in its own namespace', async () => {
    up = await labUp(2, options);
    expect(up.hosts.map((h) => [h.name, h.action, h.running])).toEqual([
      ['lab1', 'created', true],
      ['lab2', 'created', true],
    ]);
    // No control plane serves the lab's folder: nothing to register with.
    expect(up.hosts[0]?.registration.registered).toBe(false);
    expect(new Set(up.hosts.map((h) => h.address)).size).toBe(2);
    for (const host of up.hosts) {
      expect(host.namespace).toBe(`${prefix}-${host.name}`);
      expect(processInNamespace(host.pid as number, host.namespace)).toBe(true);
      const info = await agentClient(host).hostInfo({});
      expect(info.protocolVersion).toBe(1);
      expect(info.epoch).toBe(0);
    }
    const status = await labStatus({ dir });
    expect(status.map((h) => ({ name: h.name, pid: h.pid, running: h.running }))).toEqual(up.hosts.map((h) => ({ name: h.name, pid: h.pid, running: true })));
  });

  it('carries a per-operation data path between two lab hosts', async () => {
    const [lab1, lab2] = up.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    const plan = planDataPath({ operationId: 'lab-path', serverManagementAddress: lab2.address, clientManagementAddress: lab1.address });
    const key = newPskKey();
    const at = (h: typeof lab1) => ({ namespace: h.namespace, credentialsRoot: join(h.home, 'net-keys') });
    const server = await openDataPath({ plan, role: 'server', pskKey: key, ...at(lab2) });
    const client = await openDataPath({ plan, role: 'client', pskKey: key, ...at(lab1) });
    expect(client).toMatchObject({ device: 'mgmt0', mtu: 1450, localManagementAddress: lab1.address, remoteAddress: server.localAddress });
    const before = await linkCounters(plan.linkName, at(lab2));
    await execFileAsync('nsenter', [`--net=/run/netns/${lab1.namespace}`, '--', 'busybox', 'ping', '-c', '3', '-W', '2', server.localAddress]);
    const after = await linkCounters(plan.linkName, at(lab2));
    expect(after.rxPackets - before.rxPackets).toBeGreaterThanOrEqual(3);
    for (const h of [lab1, lab2]) {
      await closeDataPath({ operationId: 'lab-path', ...at(h) });
      expect(await listDataPaths(at(h))).toEqual({ links: [], credentials: [] });
    }
  });

  it('up again leaves running agents alone and restarts a killed one', async () => {
    const again = await labUp(2, { dir });
    expect(again.hosts.map((h) => [h.action, h.pid])).toEqual(up.hosts.map((h) => ['running', h.pid]));

    const [lab1, lab2] = up.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    process.kill(lab1.pid as number, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 200));
    expect((await labStatus({ dir })).map((h) => h.running)).toEqual([false, true]);

    const repaired = await labUp(2, { dir });
    expect(repaired.hosts.map((h) => h.action)).toEqual(['restarted', 'running']);
    expect(repaired.hosts[1]?.pid).toBe(lab2.pid);
    expect(repaired.hosts[0]?.pid).not.toBe(lab1.pid);
    expect((await agentClient(lab1).hostInfo({})).agentInstance).toBeTruthy();
  });

  it('refuses options that clash with the lab or the machine before making anything', async () => {
    await expect(labUp(2, { dir, subnet: '10.213.1.0/24' })).rejects.toMatchObject({ code: 'INVALID_INPUT', message: expect.stringMatching(/was made with subnet/) });
    const otherDir = mkdtempSync(`/tmp/${prefix}-other-`);
    try {
      // Another lab over this lab's subnet would steal its routes.
      await expect(labUp(1, { dir: otherDir, prefix: `${prefix.slice(0, 5)}z`, subnet })).rejects.toMatchObject({ code: 'INVALID_INPUT', message: expect.stringMatching(/overlaps/) });
      expect((await listNamespaces()).filter((n) => n.startsWith(`${prefix.slice(0, 5)}z-`))).toEqual([]);
    } finally {
      await labDown({ dir: otherDir, prefix: `${prefix.slice(0, 5)}z` });
      rmSync(otherDir, { recursive: true, force: true });
    }
    await expect(labUp(0, { dir })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
  });

  it('down removes every process, namespace, link and file it made', async () => {
    const pids = (await labStatus({ dir })).map((h) => h.pid as number);
    const result = await labDown({ dir });
    expect(result.removedNamespaces.sort()).toEqual([`${prefix}-lab1`, `${prefix}-lab2`]);
    for (const pid of pids) expect(isProcessAlive(pid)).toBe(false);
    expect(await labNames()).toEqual([]);
    expect(readdirSync('/dev/shm').filter((e) => e.includes(`-${prefix}-`))).toEqual([]);
    expect(existsSync(dir)).toBe(false);
    expect(await labStatus({ dir })).toEqual([]);
  });
});
