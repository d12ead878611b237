// Hosts end to end, on the real kernel: a control plane (a daemon with its own
// host) and two lab hosts, each a network namespace running `offshoot agent
// serve`, registered with `host add` by `npm run lab -- up`. A VM on each lab
// host (its QEMU inside that host's namespace), exec in it, a fork on a lab
// host, a checkpoint and its restore there; every call through the agent
// protocol over HTTP. Then an agent killed with SIGKILL: its VMs run on, the
// host becomes unreachable and its VMs unknown; restarted, the host is back
// with a new epoch and its VMs re-adopted with the same QEMUs. Nothing of the
// lab is left afterwards.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningDaemon } from '../../src/api/index.ts';
import { HostClient } from '../../src/client/index.ts';
import { isProcessAlive } from '../../src/common/index.ts';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import { labUp } from '../../src/lab/lab.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { VmRecord } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { TestHome } from '../harness.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { startLabFleet } from '../lab-fleet.ts';

const prefix = `oht${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${190 + ((randomBytes(1)[0] as number) % 40)}.0/24`;

describe('hosts: a control plane and two lab hosts', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let lab: UpResult;
  let labDir: string;

  let fleet: LabFleet | undefined;

  beforeAll(async () => {
    fleet = await startLabFleet(prefix, subnet, { hostHeartbeatMs: 300, hostLeaseMs: 2_000 });
    ({ t, daemon, lab, labDir } = fleet);
  }, 180_000);

  afterAll(() => fleet?.close(), 120_000);

  it('registers the lab hosts with the control plane, each with its default datastore', async () => {
    expect(lab.hosts.map((h) => [h.name, h.registration.registered])).toEqual([
      ['lab1', true],
      ['lab2', true],
    ]);
    const hosts = await new HostClient(t.client()).list();
    expect(hosts.length).toBe(3);
    expect(hosts.map((h) => h.name)).toEqual(expect.arrayContaining(['lab1', 'lab2']));
    for (const h of hosts) {
      expect(h.state).toBe('ready');
      expect(h.memory?.totalBytes).toBeGreaterThan(0);
    }
    const lab1 = hosts.find((h) => h.name === 'lab1');
    expect(lab1?.url).toBe(lab.hosts[0]?.url);
    expect(lab1).not.toHaveProperty('token');
    await eventually(async () => (await daemon.storage.catalog.listDatastores()).some((d) => d.name === 'lab1-local'), 10_000, 'the default datastore of lab1');
    // A second registration of the same agent is refused; a wrong credential is refused.
    await expect(new HostClient(t.client()).add('lab1', lab.hosts[0]?.url as string, 'x'.repeat(43))).rejects.toMatchObject({ code: 'ALREADY_EXISTS' });
  });

  it('runs a VM on each lab host, its QEMU in that host namespace, and execs in it', async () => {
    const client = t.client();
    for (const host of lab.hosts) {
      const { vm } = await client.createVm({ name: `vm-${host.name}`, memory: '192M', host: host.name, start: true });
      const done = (await client.getVm(vm.id)) as VmRecord & { host: string };
      await eventually(async () => (await client.getVm(vm.id)).state === 'running', 120_000, `vm-${host.name} to run`);
      const running = (await client.getVm(vm.id)) as VmRecord & { host: string };
      expect(running.host).toBe(host.name);
      expect(done.hostId).toBe(running.hostId);
      const pid = running.runtime?.pid as number;
      expect(processInNamespace(pid, host.namespace)).toBe(true);
      const out = await client.exec(vm.id, '/bin/hostname', []);
      expect(out.stdout.toString().trim()).toBe(`vm-${host.name}`);
    }
    const list = await client.listVms();
    expect(list.map((v) => (v as VmRecord & { host: string }).host).sort()).toEqual(['lab1', 'lab2']);
  }, 300_000);

  it('forks and checkpoints on a lab host, and restores the checkpoint there', async () => {
    const client = t.client();
    const fork = await client.forkVm('vm-lab2', { count: 1 });
    const forked = await client.waitTask(fork.task?.id as string);
    const child = (forked.result as { children: Array<{ name: string }> }).children[0]?.name as string;
    const childVm = (await client.getVm(child)) as VmRecord & { host: string };
    expect(childVm.host).toBe('lab2');
    expect(processInNamespace(childVm.runtime?.pid as number, lab.hosts[1]?.namespace as string)).toBe(true);
    expect((await client.exec(child, '/bin/hostname', [])).stdout.toString().trim()).toBe(child);

    const ck = await client.checkpointVm('vm-lab2', { name: 'lab2-ck' });
    await client.waitTask(ck.task?.id as string);
    const checkpoint = await client.getCheckpoint('lab2-ck');
    expect(checkpoint.state).toBe('complete');
    expect(checkpoint.hostId).toBe(childVm.hostId);
    expect(checkpoint.file).toMatch(/^home:checkpoints\/lab2-ck\.ckpt$/);
    expect(existsSync(checkpoint.path)).toBe(true);
    const restore = await client.restore({ checkpoint: 'lab2-ck', name: 'lab2-r', mode: 'eager' });
    await client.waitTask(restore.task?.id as string);
    const restored = (await client.getVm('lab2-r')) as VmRecord & { host: string };
    expect(restored.state).toBe('running');
    expect(restored.host).toBe('lab2');
    for (const name of [child, 'lab2-r']) {
      await client.killVm(name);
      await client.deleteVm(name);
    }
    await client.deleteCheckpoint('lab2-ck');
  }, 400_000);

  it('marks the VMs of a host whose agent died unknown, and re-adopts them when it is back', async () => {
    const client = t.client();
    const hosts = new HostClient(client);
    const lab1 = lab.hosts[0] as UpResult['hosts'][number];
    const before = await client.getVm('vm-lab1');
    const epoch = (await hosts.get('lab1')).epoch;
    process.kill(lab1.pid as number, 'SIGKILL');
    await eventually(async () => (await hosts.get('lab1')).state === 'unreachable', 30_000, 'lab1 to be unreachable');
    await eventually(async () => (await client.getVm('vm-lab1')).state === 'unknown', 10_000, 'vm-lab1 to be unknown');
    // Its QEMU runs on meanwhile; the other host is not touched.
    expect(isProcessAlive(before.runtime?.pid as number)).toBe(true);
    expect((await client.getVm('vm-lab2')).state).toBe('running');
    const again = await labUp(2, { dir: labDir, prefix, subnet }, t.home);
    expect(again.hosts.map((h) => h.action)).toEqual(['restarted', 'running']);
    await eventually(async () => (await client.getVm('vm-lab1')).state === 'running', 60_000, 'vm-lab1 to be re-adopted');
    const after = await client.getVm('vm-lab1');
    expect(after.runtime?.pid).toBe(before.runtime?.pid);
    expect((await hosts.get('lab1')).epoch).toBeGreaterThan(epoch);
    expect((await client.exec('vm-lab1', '/bin/hostname', [])).stdout.toString().trim()).toBe('vm-lab1');
  }, 200_000);

  it('removes a host only when no VM lives there', async () => {
    const hosts = new HostClient(t.client());
    await expect(hosts.remove('lab2')).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
    await t.client().killVm('vm-lab2');
    await t.client().deleteVm('vm-lab2');
    // Its default datastore stays recorded (datastores outlive a host's membership); the host goes.
    const removed = await hosts.remove('lab2');
    expect(removed.name).toBe('lab2');
    expect((await hosts.list()).map((h) => h.name)).not.toContain('lab2');
  }, 120_000);
});
