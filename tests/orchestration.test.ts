// Fast tests of the orchestration (src/vm) against the fake agent, which
// passes the same contract as the real one: a real SQLite inventory, the real
// engine and fleet, and a host whose "QEMU" lives in memory. Fork, checkpoint
// and restore succeed and roll back at each injected failure; a controller
// that restarts rolls an interrupted fork back from its journal; a host that
// is lost makes its VMs unknown and its return re-adopts them. The same paths
// run against real QEMU in tests/e2e.
import { describe, expect, it } from 'vitest';
import { OffshootError } from '../src/common/index.ts';
import type { ForkResult, TaskRecord } from '../src/vm/index.ts';
import { closedAfterEach, oneHostFleet } from './fake-fleet.ts';

async function setup() {
  const s = await oneHostFleet({ prefix: 'osh-orch' });
  return { ...s, agent: s.local };
}

describe('orchestration against the fake agent', () => {
  const closers = closedAfterEach();

  it('forks a running VM: children on the source host, all mapping the template, the source running again', async () => {
    const s = await setup();
    closers.push(s.close);
    const src = await s.running('src');
    const { task } = await s.engine.fork('src', { count: 2 });
    const done = await s.engine.tasks.wait(task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as ForkResult;
    expect(result.children.map((c) => c.name)).toEqual(['src-c1', 'src-c2']);
    const vms = await s.engine.list();
    expect(vms.map((v) => [v.name, v.state, v.hostId === src.hostId])).toEqual([
      ['src', 'running', true],
      ['src-c1', 'running', true],
      ['src-c2', 'running', true],
    ]);
    const templates = new Set(vms.map((v) => v.runtime?.memory.templateId));
    expect(templates.size).toBe(1);
    expect(s.agent.templates.size).toBe(1);
    // The source's new delta sits over a base shared with its children.
    const base = vms[0]?.spec.disks[0]?.backing[0] as string;
    expect(base).toMatch(/^home:bases\//);
    for (const vm of vms) expect(vm.spec.disks[0]?.backing[0]).toBe(base);
  });

  for (const step of ['prepareFork', 'switchFork', 'completeForkChild'] as const) {
    it(`rolls a fork back when ${step} fails: the source runs on, no child is left`, async () => {
      const s = await setup();
      closers.push(s.close);
      const src = await s.running('src');
      const filesBefore = [...s.agent.files].sort();
      s.agent.failNext(step, new OffshootError('QMP_COMMAND_FAILED', `injected: ${step}`, {}, 500));
      const { task } = await s.engine.fork('src', { count: 2 });
      const done = (await s.engine.tasks.wait(task?.id as string)) as TaskRecord;
      expect(done.state).toBe('failed');
      expect(done.error?.code).toBe('FORK_FAILED');
      const vms = await s.engine.list();
      expect(vms.map((v) => [v.name, v.state])).toEqual([['src', 'running']]);
      expect([...s.agent.vms.keys()]).toEqual([src.id]);
      if (step === 'prepareFork') expect([...s.agent.files].sort()).toEqual(filesBefore);
      // Nothing the fork made is in use any more: garbage collection leaves only what src needs.
      await s.engine.collectGarbage();
      const needed = new Set([...(vms[0]?.spec.disks.flatMap((d) => [d.file, ...d.backing]) ?? [])]);
      expect([...s.agent.files].filter((f) => f.startsWith('home:bases/') && !needed.has(f))).toEqual([]);
    });
  }

  it('checkpoints a VM (its memory made its own again after a fork) and restores it as a new VM', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.running('src');
    await s.engine.tasks.wait((await s.engine.fork('src', { count: 1 })).task?.id as string);
    expect((await s.engine.resolve('src')).runtime?.memory.mode).toBe('derived');
    const ck = await s.engine.tasks.wait((await s.engine.checkpoint('src', { name: 'ck' })).task?.id as string);
    expect(ck.state, JSON.stringify(ck.error)).toBe('succeeded');
    const checkpoint = await s.engine.getCheckpoint('ck');
    expect(checkpoint).toMatchObject({ state: 'complete', file: 'home:checkpoints/ck.ckpt', hostId: (await s.engine.resolve('src')).hostId });
    const restored = await s.engine.tasks.wait((await s.engine.restore({ checkpoint: 'ck', name: 'copy', mode: 'eager' })).task?.id as string);
    expect(restored.state, JSON.stringify(restored.error)).toBe('succeeded');
    expect((await s.engine.resolve('copy')).state).toBe('running');
    // A restore that fails leaves no VM.
    s.agent.failNext('restoreVm');
    const failed = await s.engine.tasks.wait((await s.engine.restore({ checkpoint: 'ck', name: 'copy2', mode: 'eager' })).task?.id as string);
    expect(failed.state).toBe('failed');
    await expect(s.engine.resolve('copy2')).rejects.toMatchObject({ code: 'NOT_FOUND' });
  });

  it('marks the VMs of a lost host unknown, and re-adopts them when it answers again', async () => {
    const s = await setup();
    closers.push(s.close);
    const src = await s.running('src');
    s.agent.failNext('hostInfo', new OffshootError('HOST_UNREACHABLE', 'injected', {}, 502));
    // The lease is 200 ms: keep the host silent past it.
    const silence = setInterval(() => s.agent.failNext('hostInfo', new OffshootError('HOST_UNREACHABLE', 'injected', {}, 502)), 20);
    await waitUntil(async () => (await s.engine.resolve('src')).state === 'unknown');
    clearInterval(silence);
    await waitUntil(async () => (await s.engine.resolve('src')).state === 'running');
    expect((await s.engine.resolve('src')).runtime?.pid).toBe(src.runtime?.pid);
  });

  it('recovers a fork interrupted after preparing: children go, the disk split is undone, the source runs on', async () => {
    const s = await setup();
    closers.push(s.close);
    const src = await s.running('src');
    // A fork whose controller died right after preparing: its task left running with its journal.
    const forkId = '6f6f6f6f-0000-4000-8000-00000000f0c1';
    const childId = '6f6f6f6f-0000-4000-8000-00000000c0c1';
    const client = s.fleet.agent(src.hostId);
    const op = await client.prepareFork({ operationId: '6f6f6f6f-0000-4000-8000-00000000a0a1', forkId, source: { vmId: src.id, name: src.name, spec: src.spec }, children: [{ vmId: childId, name: 'src-c1', spec: src.spec }], maxDepth: 4 });
    await waitUntil(async () => (await client.getOperation({ operationId: op.operationId, afterSeq: 0, waitMs: 0 })).operation.state === 'succeeded');
    const prepared = (await client.getOperation({ operationId: op.operationId, afterSeq: 0, waitMs: 0 })).operation.result as { templateId: string; disks: unknown; incoming: unknown };
    await s.inventory.updateVm(src.id, { state: 'forking' });
    const now = new Date().toISOString();
    await s.inventory.insertTask({ id: '6f6f6f6f-0000-4000-8000-00000000fa51', kind: 'vm.fork', targetId: src.id, targetName: src.name, state: 'running', progress: 0.1, message: 'preparing', result: { journal: { forkId, sourceId: src.id, hostId: src.hostId, previousState: 'running', phase: 'prepared', childIds: [childId], templateId: prepared.templateId, disks: prepared.disks, incoming: prepared.incoming } }, error: null, createdAt: now, updatedAt: now });
    const report = await s.engine.recover();
    expect(report.adopted).toEqual(['src']);
    const task = await s.engine.tasks.get('6f6f6f6f-0000-4000-8000-00000000fa51');
    expect(task.state).toBe('failed');
    expect(task.error?.code).toBe('TASK_INTERRUPTED');
    expect(task.message).toContain('undid the disk split');
    expect((await s.engine.resolve('src')).state).toBe('running');
    expect(s.agent.files.has(src.spec.disks[0]?.file as string)).toBe(true);
    expect([...s.agent.files].some((f) => f.startsWith(`home:vms/${childId}/`))).toBe(false);
  });

  for (const taken of [false, true]) {
    it(`recovers a fork of a fork interrupted while making the source's memory its own (${taken ? 'after' : 'before'} the target took over)`, async () => {
      const s = await setup();
      closers.push(s.close);
      await s.running('src');
      await s.engine.tasks.wait((await s.engine.fork('src', { count: 1 })).task?.id as string);
      const src = await s.engine.resolve('src');
      expect(src.runtime?.memory.mode).toBe('derived');
      const client = s.fleet.agent(src.hostId);
      // The dead controller had started the target (and journaled it) and, in the second case, switched to it.
      const target = (await client.getOperation({ operationId: (await client.startOwnedTarget({ operationId: '6f6f6f6f-0000-4000-8000-00000000b0b1', vmId: src.id, name: src.name, spec: src.spec })).operationId, afterSeq: 0, waitMs: 2_000, until: 'end' })).operation.result as NonNullable<typeof src.runtime>;
      if (taken) {
        await client.getOperation({ operationId: (await client.migrateToOwnedTarget({ operationId: '6f6f6f6f-0000-4000-8000-00000000b0b2', vmId: src.id })).operationId, afterSeq: 0, waitMs: 2_000, until: 'end' });
        await client.switchToOwnedTarget({ vmId: src.id });
      }
      await s.inventory.updateVm(src.id, { state: 'forking' });
      const now = new Date().toISOString();
      const forkId = '6f6f6f6f-0000-4000-8000-00000000f0c2';
      await s.inventory.insertTask({ id: '6f6f6f6f-0000-4000-8000-00000000fa52', kind: 'vm.fork', targetId: src.id, targetName: src.name, state: 'running', progress: 0.02, message: 'making memory owned', result: { journal: { forkId, sourceId: src.id, hostId: src.hostId, previousState: 'running', phase: 'preparing', childIds: [], owned: target } }, error: null, createdAt: now, updatedAt: now });
      await s.engine.recover();
      const task = await s.engine.tasks.get('6f6f6f6f-0000-4000-8000-00000000fa52');
      expect(task.state).toBe('failed');
      const after = await s.engine.resolve('src');
      expect(after.state).toBe('running');
      // Before the switch the target is dropped and the old QEMU runs on; after it, the target has the VM.
      expect(after.runtime?.pid).toBe(taken ? target.pid : src.runtime?.pid);
      expect(s.agent.vms.get(src.id)?.runtime.pid).toBe(after.runtime?.pid);
      expect(await client.switchToOwnedTarget({ vmId: src.id }).catch((e: OffshootError) => e.code)).toBe('FORK_NOT_PREPARED');
    });
  }
});

async function waitUntil(check: () => Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
}
