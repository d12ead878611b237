// Live migration end to end, the harder cases, on two lab hosts (each
// `offshoot agent serve` in its own network namespace): a forked child (its
// memory derived from its parent's template, its disk a delta over a base the
// destination does not have) migrates with post-copy forced, becomes owned at
// the destination with its disk copied whole, and its counter goes on; a
// guest that dirties memory faster than a capped path carries it is switched
// to post-copy (auto) and arrives whole; the destination's QEMU killed with SIGKILL during pre-copy leaves the VM running
// at its source in the same QEMU, and nothing at the destination.
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MigrateClient } from '../../src/client/index.ts';
import { processInNamespace } from '../../src/lab/agent-process.ts';
import type { UpResult } from '../../src/lab/lab.ts';
import type { ForkResult, MigrateResult, MigrationProgress, VmRecord } from '../../src/vm/index.ts';
import { eventually } from '../harness.ts';
import type { TestHome } from '../harness.ts';
import type { LabFleet } from '../lab-fleet.ts';
import { WRITER, counterGoesOn, expectNoGapInLines, pathLinks, qemusOf, sh, startMigrationLab, startWriter } from '../migration-lab.ts';

const prefix = `omf${randomBytes(2).toString('hex').slice(0, 3)}`;
const subnet = `10.213.${60 + ((randomBytes(1)[0] as number) % 30)}.0/24`;

describe('live migration between lab hosts: post-copy, a forked child, a killed destination', () => {
  let t: TestHome;
  let lab: UpResult;

  let fleet: LabFleet | undefined;

  beforeAll(async () => {
    fleet = await startMigrationLab(prefix, subnet);
    ({ t, lab } = fleet);
  }, 180_000);

  afterAll(() => fleet?.close(), 120_000);

  it('a forked child migrates with post-copy forced: owned at the destination, its disk copied whole, its counter going on', async () => {
    const client = t.client();
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    await client.createVm({ name: 'omf-parent', memory: '192M', host: 'lab1', start: true });
    await eventually(async () => (await client.getVm('omf-parent')).state === 'running', 150_000, 'the parent to run');
    await sh(client, 'omf-parent', 'dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && sync');
    const fork = await client.forkVm('omf-parent', { count: 1, prefix: 'omf-child' });
    const forked = await client.waitTask(fork.task?.id as string);
    expect(forked.state, JSON.stringify(forked.error)).toBe('succeeded');
    const childName = (forked.result as ForkResult).children[0]?.name as string;
    const child = await client.getVm(childName);
    expect(child.runtime?.memory.mode).toBe('derived');
    const md5 = await sh(client, childName, 'md5sum /data/blob');
    await startWriter(client, childName);

    const started = await new MigrateClient(client).migrate(childName, { to: 'lab2', postcopy: 'always' });
    const task = await client.waitTask(started.task?.id as string);
    expect(task.state, JSON.stringify(task.error)).toBe('succeeded');
    const result = task.result as MigrateResult;
    expect(result.postcopy).toBe(true);
    expect(result.storage.sync).toEqual({ disk0: 'full' });
    const moved = (await client.getVm(childName)) as VmRecord & { host: string };
    expect(moved.host).toBe('lab2');
    expect(moved.runtime?.memory.mode).toBe('owned');
    expect(moved.spec.disks[0]?.backing).toEqual([]);
    expect(processInNamespace(moved.runtime?.pid as number, lab2.namespace)).toBe(true);
    expect(await sh(client, childName, 'md5sum /data/blob')).toBe(md5);
    await counterGoesOn(client, childName, 20_000);
    await expectNoGapInLines(client, childName);
    // The parent runs on at lab1, untouched; no path is left.
    expect((await client.getVm('omf-parent')).state).toBe('running');
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);
    expect(existsSync(join(lab1.home, 'vms', moved.id))).toBe(false);
    for (const name of [childName, 'omf-parent']) {
      await client.killVm(name);
      await client.deleteVm(name);
    }
  }, 400_000);

  it('post-copy auto: a guest that dirties memory faster than the capped path carries it is switched to post-copy, and arrives whole', async () => {
    const client = t.client();
    await client.createVm({ name: 'omf-busy', memory: '192M', host: 'lab1', start: true });
    await eventually(async () => (await client.getVm('omf-busy')).state === 'running', 150_000, 'the VM to run');
    await sh(client, 'omf-busy', 'mkdir -p /mnt/ram && mount -t tmpfs -o size=120m tmpfs /mnt/ram && dd if=/dev/urandom of=/mnt/ram/blob bs=1M count=24 2>/dev/null');
    const md5 = await sh(client, 'omf-busy', 'md5sum /mnt/ram/blob');
    await sh(client, 'omf-busy', '(i=0; while true; do i=$((i+1)); echo $i > /mnt/ram/counter; dd if=/dev/urandom of=/mnt/ram/dirty bs=1M count=32 2>/dev/null; done) >/dev/null 2>&1 &');
    const started = await new MigrateClient(client).migrate('omf-busy', { to: 'lab2', postcopy: 'auto', maxBandwidth: '8M' });
    const task = await client.waitTask(started.task?.id as string);
    const result = task.result as MigrateResult;
    expect(result.postcopy).toBe(true);
    expect(result.postcopyReason).toMatch(/did not fall|time budget/);
    expect(result.converged).toBe(false);
    expect(((await client.getVm('omf-busy')) as VmRecord & { host: string }).host).toBe('lab2');
    expect(await sh(client, 'omf-busy', 'md5sum /mnt/ram/blob')).toBe(md5);
    const c1 = Number(await sh(client, 'omf-busy', 'cat /mnt/ram/counter'));
    await eventually(async () => Number(await sh(client, 'omf-busy', 'cat /mnt/ram/counter')) > c1, 30_000, 'the counter to go on');
    await client.killVm('omf-busy');
    await client.deleteVm('omf-busy');
  }, 400_000);

  it("the destination's QEMU killed during pre-copy: the VM runs on at its source in the same QEMU, nothing is left at the destination", async () => {
    const client = t.client();
    const [lab1, lab2] = lab.hosts as [UpResult['hosts'][number], UpResult['hosts'][number]];
    await client.createVm({ name: 'omf-vm', memory: '192M', host: 'lab1', start: true });
    await eventually(async () => (await client.getVm('omf-vm')).state === 'running', 150_000, 'the VM to run');
    await sh(client, 'omf-vm', WRITER);
    const before = await client.getVm('omf-vm');
    const started = await new MigrateClient(client).migrate('omf-vm', { to: 'lab2', postcopy: 'never', maxBandwidth: '2M' });
    const taskId = started.task?.id as string;
    await eventually(async () => ((await client.getTask(taskId)).result as { progress?: MigrationProgress } | null)?.progress?.phase === 'memory', 60_000, 'pre-copy to run');
    const victims = qemusOf(before.id, lab2.namespace);
    expect(victims.length).toBe(1);
    process.kill(victims[0] as number, 'SIGKILL');
    const error = await client.waitTask(taskId).then(
      () => null,
      (err: unknown) => err as { code?: string },
    );
    expect(error?.code).toBe('MIGRATION_FAILED');
    expect((await client.getTask(taskId)).state).toBe('failed');
    const after = (await client.getVm('omf-vm')) as VmRecord & { host: string };
    expect([after.host, after.state, after.runtime?.pid]).toEqual(['lab1', 'running', before.runtime?.pid]);
    await counterGoesOn(client, 'omf-vm', 20_000);
    expect(qemusOf(before.id, lab2.namespace)).toEqual([]);
    expect(existsSync(join(lab2.home, 'vms', before.id))).toBe(false);
    expect(readdirSync(lab2.memoryDir).filter((f) => f.startsWith(before.id))).toEqual([]);
    expect(pathLinks(lab1.namespace)).toEqual([]);
    expect(pathLinks(lab2.namespace)).toEqual([]);
    await client.killVm('omf-vm');
    await client.deleteVm('omf-vm');
  }, 300_000);
});
