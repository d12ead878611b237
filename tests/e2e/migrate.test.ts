// Live migration end to end: a control plane (a daemon with its own host) and
// two lab hosts, each `offshoot agent serve` in its own network namespace. A
// guest that keeps writing (a loop dirtying a tmpfs file and appending
// numbered lines to a file on its disk) moves from lab1 to lab2 through the
// API: its RAM (a tmpfs file of random data) and disk files have the same md5
// after; its counter goes on; the numbered lines have no gap (no disk write
// lost); its local disk was copied (only the delta above the default guest's
// base, which lab2 has with the same content id); its QEMU runs in lab2's
// namespace and nothing of it is left on lab1; the isolated path (a VXLAN link
// with its own VNI in each namespace) exists during the migration and is gone
// after, with its keys, and the streams' TCP connections ran between the
// path's addresses only. Then a migration back, cancelled during pre-copy: the
// VM runs on at lab2 in the same QEMU and lab1 has nothing of it.
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrateClient } from '../../src/client/index.ts';
import type { OffshootClient } from '../../src/client/index.ts';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { MigrateResult, MigrationProgress, VmRecord } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { TestHome } from '../harness.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { startLabFleet } from '../lab-fleet.ts';

const prefix = `omg${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${100 + ((randomBytes(1)[0] as number) % 40)}.0/24`;

/** Local and peer addresses of the TCP connections of a migration's streams (ports 49152, 49153) in a namespace. */
function streamConnections(namespace: string): Array<{ local: string; peer: string }> {
  const out = execFileSync('ip', ['netns', 'exec', namespace, 'ss', '-Htn', 'state', 'established', '( sport = :49152 or sport = :49153 )'], { encoding: 'utf8' });
  return out
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => {
      const [local = '', peer = ''] = l.trim().split(/\s+/).slice(-2);
      return { local: local.replace(/:\d+$/, ''), peer: peer.replace(/:\d+$/, '') };
    });
}

function pathLinks(namespace: string): string[] {
  const out = execFileSync('ip', ['-n', namespace, '-j', 'link', 'show', 'type', 'vxlan'], { encoding: 'utf8' });
  return (JSON.parse(out || '[]') as Array<{ ifname: string }>).map((l) => l.ifname).filter((n) => n.startsWith('ofvx'));
}

async function sh(client: OffshootClient, vm: string, script: string): Promise<string> {
  const out = await client.exec(vm, '/bin/sh', ['-c', script], { timeoutMs: 60_000 });
  if (out.exitCode !== 0) throw new Error(`guest command failed (${out.exitCode}): ${script}: ${out.stderr.toString()}`);
  return out.stdout.toString();
}

describe('live migration between lab hosts', () => {
  let t: TestHome;
  let lab: UpResult;
  const name = 'omg-vm';

  let fleet: LabFleet | undefined;

  beforeAll(async () => {
    fleet = await startLabFleet(prefix, subnet, { hostHeartbeatMs: 500, hostLeaseMs: 5_000 });
    ({ t, lab } = fleet);
  }, 180_000);

  afterAll(() => fleet?.close(), 120_000);

  it('moves a writing guest with its memory and disk intact, over a path that exists only for the move', async () => {
    const client = t.client();
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    await client.createVm({ name, memory: '256M', host: 'lab1', start: true });
    await eventually(async () => (await client.getVm(name)).state === 'running', 150_000, `${name} to run`);
    await sh(client, name, 'mkdir -p /mnt/ram && mount -t tmpfs -o size=96m tmpfs /mnt/ram && dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=48 2>/dev/null && dd if=/dev/urandom of=/data/blob bs=1M count=24 2>/dev/null && sync');
    const before = await sh(client, name, 'md5sum /mnt/ram/blob /data/blob');
    // The writer: a counter in RAM, 4 MiB of tmpfs rewritten, a numbered line appended to the disk, every 50 ms.
    await sh(client, name, '(i=0; while true; do i=$((i+1)); echo $i > /mnt/ram/counter; dd if=/dev/urandom of=/mnt/ram/dirty bs=1M count=4 2>/dev/null; echo $i >> /data/lines; sleep 0.05; done) >/dev/null 2>&1 &');
    await eventually(async () => Number(await sh(client, name, 'cat /mnt/ram/counter 2>/dev/null || echo 0')) > 5, 30_000, 'the writer to run');
    const source = await client.getVm(name);
    expect(processInNamespace(source.runtime?.pid as number, lab1.namespace)).toBe(true);

    const started = await new MigrateClient(client).migrate(name, { to: 'lab2', postcopy: 'never', maxBandwidth: '1G' });
    expect(started.vm.state).toBe('migrating');
    // The path exists in both namespaces while the migration runs; the task shows live figures.
    let sawPath = false;
    let sawProgress: MigrationProgress | undefined;
    const streams = new Map<string, { local: string; peer: string }>();
    const task = await client.waitTask(started.task?.id as string, (running) => {
      if (!sawPath && running.state === 'running' && pathLinks(lab1.namespace).length === 1 && pathLinks(lab2.namespace).length === 1) sawPath = true;
      if (running.state === 'running') for (const c of streamConnections(lab2.namespace)) streams.set(`${c.local}-${c.peer}`, c);
      const p = (running.result as { progress?: MigrationProgress } | null)?.progress;
      if (p && p.pass > 0) sawProgress = p;
    }, 50);
    expect(task.error).toBeNull();
    expect(task.state).toBe('succeeded');
    const result = task.result as MigrateResult;
    expect(sawPath).toBe(true);
    expect(sawProgress?.remainingBytes).toBeGreaterThanOrEqual(0);
    expect(result).toMatchObject({ from: 'lab1', to: 'lab2', postcopy: false });
    expect(result.downtimeMs).toBeGreaterThanOrEqual(0);
    expect(result.passes).toBeGreaterThan(0);
    expect(result.memoryBytes).toBeGreaterThan(48 * 2 ** 20);
    expect(result.storage.copied).toEqual(['disk0']);
    expect(result.storage.sync).toEqual({ disk0: 'top' });
    expect(result.diskBytes).toBeGreaterThan(0);
    expect(result.path.linkName).toMatch(/^ofvx\d+$/);
    expect(result.path.bytesSent).toBeGreaterThan(result.memoryBytes);
    // The migration and NBD streams ran between the path's addresses only, never the hosts' management addresses.
    expect(streams.size).toBeGreaterThan(0);
    for (const c of streams.values()) expect(c).toEqual({ local: result.path.destinationAddress, peer: result.path.sourceAddress });
    expect([result.path.sourceAddress, result.path.destinationAddress]).not.toContain(lab1.address);
    expect([result.path.sourceAddress, result.path.destinationAddress]).not.toContain(lab2.address);

    // The VM is at lab2, in one step of the inventory, its QEMU in lab2's namespace.
    const moved = (await client.getVm(name)) as VmRecord & { host: string };
    expect(moved.host).toBe('lab2');
    expect(moved.state).toBe('running');
    expect(moved.runtime?.hostId).toBe(moved.hostId);
    expect(processInNamespace(moved.runtime?.pid as number, lab2.namespace)).toBe(true);
    expect(processInNamespace(source.runtime?.pid as number, lab1.namespace)).toBe(false);
    // Memory and disk intact, the writer still going, no line lost.
    expect(await sh(client, name, 'md5sum /mnt/ram/blob /data/blob')).toBe(before);
    const c1 = Number(await sh(client, name, 'cat /mnt/ram/counter'));
    await eventually(async () => Number(await sh(client, name, 'cat /mnt/ram/counter')) > c1 + 3, 20_000, 'the counter to go on');
    expect(await sh(client, name, "awk 'NR != $1 { print \"gap at line \" NR \": \" $1; exit 1 }' /data/lines && echo ok")).toBe('ok\n');
    // Nothing of the path or the VM left on lab1; no path left on lab2.
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);
    for (const h of [lab1, lab2]) expect(existsSync(join(h.home, 'net', 'keys')) ? readdirSync(join(h.home, 'net', 'keys')) : []).toEqual([]);
    expect(existsSync(join(lab1.home, 'vms', moved.id))).toBe(false);
    expect(readdirSync(lab1.memoryDir).filter((f) => f.startsWith(moved.id))).toEqual([]);
  }, 400_000);

  it('a migration cancelled during pre-copy leaves the VM running at its source and nothing at the destination', async () => {
    const client = t.client();
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    const before = await client.getVm(name);
    // 2 MiB/s: the copy takes long enough to be cancelled midway.
    const started = await new MigrateClient(client).migrate(name, { to: 'lab1', postcopy: 'never', maxBandwidth: '2M' });
    const taskId = started.task?.id as string;
    await eventually(async () => ((await client.getTask(taskId)).result as { progress?: MigrationProgress } | null)?.progress?.phase === 'memory', 60_000, 'pre-copy to run');
    expect(pathLinks(lab1.namespace).length).toBe(1);
    const cancelled = await client.cancelTask(taskId);
    expect(cancelled.state).toBe('failed');
    expect(cancelled.error?.code).toBe('TASK_CANCELLED');
    const after = (await client.getVm(name)) as VmRecord & { host: string };
    expect(after.host).toBe('lab2');
    expect(after.state).toBe('running');
    expect(after.runtime?.pid).toBe(before.runtime?.pid);
    const c1 = Number(await sh(client, name, 'cat /mnt/ram/counter'));
    await eventually(async () => Number(await sh(client, name, 'cat /mnt/ram/counter')) > c1 + 3, 20_000, 'the counter to go on');
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);
    expect(existsSync(join(lab1.home, 'vms', after.id))).toBe(false);
    expect(readdirSync(lab1.memoryDir).filter((f) => f.startsWith(after.id))).toEqual([]);
    await client.killVm(name);
    await client.deleteVm(name);
  }, 200_000);
});
