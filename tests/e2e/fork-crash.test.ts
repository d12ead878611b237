// Killing the daemon in the middle of a fork (or while a checkpoint is being
// written): the restarted daemon rolls the operation back from its journal.
// The source runs on (with its memory and disk as they were), the children it
// was making or the half-written checkpoint are gone, and no QEMU process,
// memory template, disk base or work file is left behind.
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TaskRecord, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { eventually, hostPathOf, makeTestHome, startDetachedDaemon, waitForProcessExit } from '../harness.ts';

describe('daemon killed mid-fork or mid-checkpoint', () => {
  let t: TestHome;

  beforeAll(async () => {
    t = makeTestHome();
  });
  afterAll(async () => {
    await t.cleanup();
  });

  const listDir = (dir: string) => (existsSync(dir) ? readdirSync(dir) : []);

  it.each([
    ['fork.prepared', 'after preparing, before the switch-over'],
    ['fork.start-child:2', 'after the switch-over, while the children are starting'],
  ])('rolls back a fork interrupted at %s (%s)', async (point) => {
    t.env.OFFSHOOT_TEST_FAULTS = `${point}=sleep:60000`;
    let daemon = await startDetachedDaemon(t);
    const name = `src-${point.replace(/[^a-z0-9]/gi, '')}`;
    const created = await t.cli(['vm', 'create', name, '--start', '--json']);
    expect(created.code, created.stderr).toBe(0);
    expect((await t.cli(['vm', 'exec', name, '--', 'sh', '-c', 'echo before > /data/mark; echo before > /tmp/mark; sync'])).code).toBe(0);
    const client = t.client();
    const { task } = await client.forkVm(name, { count: 2 });
    await eventually(async () => {
      const current = await client.getTask(task?.id as string);
      return (current.result as { journal?: { phase: string } } | null)?.journal?.phase === (point === 'fork.prepared' ? 'prepared' : 'switched');
    }, 60_000, `fork to reach ${point}`);
    if (point !== 'fork.prepared') await new Promise((r) => setTimeout(r, 1500));
    process.kill(daemon.pid, 'SIGKILL');
    await new Promise((r) => setTimeout(r, 300));

    delete t.env.OFFSHOOT_TEST_FAULTS;
    daemon = await startDetachedDaemon(t);
    const vms = JSON.parse((await t.cli(['vm', 'list', '--json'])).stdout) as VmRecord[];
    expect(vms.map((v) => [v.name, v.state])).toEqual([[name, 'running']]);
    const marks = await t.cli(['vm', 'exec', name, '--', 'cat', '/data/mark', '/tmp/mark']);
    expect(marks.stdout).toBe('before\nbefore\n');
    const finished = (await t.cli(['task', 'show', task?.id as string, '--json'])).stdout;
    expect((JSON.parse(finished) as TaskRecord).error?.code).toBe('TASK_INTERRUPTED');
    expect(t.qemus().map((q) => q.vmId)).toEqual([vms[0]?.id]);
    expect(listDir(join(t.home, 'work'))).toEqual([]);
    expect(listDir(join(t.home, 'vms'))).toEqual([vms[0]?.id]);
    const vm = vms[0] as VmRecord;
    const templates = listDir(join(t.memoryDir, 'templates'));
    expect(templates).toEqual(vm.runtime?.memory.templateId ? [`${vm.runtime.memory.templateId}.ram`] : []);
    const bases = listDir(join(t.home, 'bases')).map((b) => join(t.home, 'bases', b));
    expect(bases.sort()).toEqual(vm.spec.disks.flatMap((d) => d.backing).map((b) => hostPathOf(t.home, b)).filter((b) => b.startsWith(join(t.home, 'bases'))).sort());

    expect((await t.cli(['vm', 'kill', name])).code).toBe(0);
    expect((await t.cli(['vm', 'delete', name])).code).toBe(0);
    process.kill(daemon.pid, 'SIGTERM');
    await waitForProcessExit(daemon.pid);
  });

  it.each([
    ['fork.make-owned:started', 'its owned QEMU waits for the migration'],
    ['fork.make-owned:migrated', 'the migration into its owned QEMU has completed'],
  ])('recovers a fork of a fork interrupted at %s (%s): every VM as before', async (point) => {
    t.env.OFFSHOOT_TEST_FAULTS = `${point}=sleep:60000`;
    let daemon = await startDetachedDaemon(t);
    const src = `s${point.endsWith('started') ? 1 : 2}`;
    expect((await t.cli(['vm', 'create', src, '--memory', '128M', '--start'])).code).toBe(0);
    const client = t.client();
    const first = await client.waitTask((await client.forkVm(src, { count: 1 })).task?.id as string);
    expect(first.state, JSON.stringify(first.error)).toBe('succeeded');
    const child = `${src}-c1`;
    expect((await client.getVm(child)).runtime?.memory.mode).toBe('derived');
    expect((await t.cli(['vm', 'exec', child, '--', 'sh', '-c', 'echo before > /data/mark; echo before > /tmp/mark; sync'])).code).toBe(0);
    const { task } = await client.forkVm(child, { count: 1 });
    await eventually(async () => Boolean(((await client.getTask(task?.id as string)).result as { journal?: { owned?: unknown } } | null)?.journal?.owned), 60_000, 'the make-owned QEMU to be journaled');
    // At :migrated, let the local migration finish first (it takes well under a second for 128 MiB here).
    if (point.endsWith('migrated')) await new Promise((r) => setTimeout(r, 5000));
    process.kill(daemon.pid, 'SIGKILL');
    await waitForProcessExit(daemon.pid);
    delete t.env.OFFSHOOT_TEST_FAULTS;
    daemon = await startDetachedDaemon(t);
    const restarted = t.client();
    const vms = JSON.parse((await t.cli(['vm', 'list', '--json'])).stdout) as VmRecord[];
    expect(vms.map((v) => [v.name, v.state]).sort()).toEqual([[src, 'running'], [child, 'running']]);
    const marks = await t.cli(['vm', 'exec', child, '--', 'cat', '/data/mark', '/tmp/mark']);
    expect(marks.stdout).toBe('before\nbefore\n');
    expect((JSON.parse((await t.cli(['task', 'show', task?.id as string, '--json'])).stdout) as TaskRecord).error?.code).toBe('TASK_INTERRUPTED');
    expect(t.qemus().map((q) => q.pid).sort()).toEqual(vms.map((v) => v.runtime?.pid).sort());
    expect(await t.problems()).toEqual([]);
    // The VM works on: it can be forked again.
    const again = await restarted.waitTask((await restarted.forkVm(child, { count: 1, prefix: 'again' })).task?.id as string);
    expect(again.state, JSON.stringify(again.error)).toBe('succeeded');
    for (const name of ['again1', child, src]) {
      expect((await t.cli(['vm', 'kill', name])).code).toBe(0);
      expect((await t.cli(['vm', 'delete', name])).code).toBe(0);
    }
    process.kill(daemon.pid, 'SIGTERM');
    await waitForProcessExit(daemon.pid);
  });

  it('removes a checkpoint interrupted while its file was written; the VM runs on', async () => {
    t.env.OFFSHOOT_TEST_FAULTS = 'checkpoint.writing=sleep:60000';
    let daemon = await startDetachedDaemon(t);
    expect((await t.cli(['vm', 'create', 'ckvm', '--start'])).code).toBe(0);
    const client = t.client();
    const { task } = await client.checkpointVm('ckvm', { name: 'half' });
    await eventually(async () => (await client.listCheckpoints()).some((c) => c.name === 'half'), 60_000, 'the checkpoint record');
    const path = (await client.getCheckpoint('half')).path;
    process.kill(daemon.pid, 'SIGKILL');
    await waitForProcessExit(daemon.pid);
    delete t.env.OFFSHOOT_TEST_FAULTS;
    daemon = await startDetachedDaemon(t);
    const restarted = t.client();
    expect(await restarted.listCheckpoints()).toEqual([]);
    expect(existsSync(path) || existsSync(`${path}.partial`)).toBe(false);
    expect((await restarted.getTask(task?.id as string)).error?.code).toBe('TASK_INTERRUPTED');
    const vm = await restarted.getVm('ckvm');
    expect(vm.state).toBe('running');
    expect((await t.cli(['vm', 'exec', 'ckvm', '--', 'true'])).code).toBe(0);
    expect(t.qemus().map((q) => q.vmId)).toEqual([vm.id]);
    expect(listDir(join(t.home, 'work'))).toEqual([]);
    expect((await t.cli(['vm', 'kill', 'ckvm'])).code).toBe(0);
    expect((await t.cli(['vm', 'delete', 'ckvm'])).code).toBe(0);
    process.kill(daemon.pid, 'SIGTERM');
    await waitForProcessExit(daemon.pid);
  });
});
