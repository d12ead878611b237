// Fast tests of the migration orchestration (src/vm/migrate) against two fake
// agents, which pass the same migration contract as the real ones: a real
// SQLite inventory, the real engine and fleet, the controller's own fake host
// in process and a second fake host over HTTP. A migration moves the VM to the
// other host in one step and cleans the source and the path; a cancel before
// the switch-over and a failure of any step leave it running at its source
// with nothing at the destination; a controller that died mid-migration
// finishes it (the destination runs the guest) or rolls it back from the
// journal. The same paths run against real QEMU on lab hosts in tests/e2e/migrate.test.ts.
import { describe, expect, it } from 'vitest';
import { OffshootError } from '../src/common/index.ts';
import { planDataPath } from '../src/net/index.ts';
import { newOperationId, runOperation } from '../src/protocol/index.ts';
import type { CallName } from '../src/protocol/index.ts';
import type { MigrateResult, MigrationProgress } from '../src/vm/index.ts';
import { closedAfterEach, twoHostFleet } from './fake-fleet.ts';

async function setup(migrateMs = 0) {
  const s = await twoHostFleet({ prefix: 'omg-orch', subnet: '10.254.7', migrateMs });
  const vm = await s.running('m1', 'a');
  return { ...s, vm, b: s.hostB };
}

describe('migration orchestration against fake agents', () => {
  const closers = closedAfterEach();

  it('moves the VM to the other host in one step; the source lets it go and the path is gone', async () => {
    const s = await setup(1_200);
    closers.push(s.close);
    const { vm, task } = await s.engine.migrate('m1', { to: 'b' });
    expect(vm.state).toBe('migrating');
    // Nothing else acts on a migrating VM.
    await expect(s.engine.stop('m1')).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
    const progress: MigrationProgress[] = [];
    const off = s.engine.events.subscribe((e) => {
      const p = e.type === 'task' && e.task.id === task?.id ? (e.task.result as { progress?: MigrationProgress } | null)?.progress : undefined;
      if (p) progress.push(p);
    });
    const done = await s.engine.tasks.wait(task?.id as string);
    off();
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as MigrateResult;
    expect(result).toMatchObject({ vm: 'm1', from: 'a', to: 'b', postcopy: false, storage: { copied: ['disk0'], sync: { disk0: 'top' } } });
    expect(result.path.linkName).toMatch(/^ofvx\d+$/);
    expect(result.timings.totalMs).toBe(result.totalMs);
    // The controller's phases add up to the whole (each rounded); the fake agents report no steps of their own.
    const { destination, source, ...controller } = result.phasesMs;
    expect(Math.abs(Object.values(controller).reduce((a, b) => a + b, 0) - result.totalMs)).toBeLessThanOrEqual(7);
    expect(result.phasesMs.transfer).toBeGreaterThanOrEqual(1_000);
    expect([destination, source]).toEqual([null, null]);
    // Both hosts hold the base under the same name: each was asked its content id once.
    expect([s.local.calls.get('contentId'), s.remote.calls.get('contentId')]).toEqual([1, 1]);
    expect(progress.some((p) => p.phase === 'memory' && typeof p.remainingBytes === 'number')).toBe(true);
    const moved = await s.engine.resolve('m1');
    expect(moved.hostId).toBe(s.b.id);
    expect(moved.state).toBe('running');
    expect(moved.runtime?.hostId).toBe('fake-b');
    expect(s.local.vms.has(moved.id)).toBe(false);
    expect([...s.local.files].some((f) => f.startsWith(`home:vms/${moved.id}/`))).toBe(false);
    expect(s.remote.files.has(moved.spec.disks[0]?.file as string)).toBe(true);
    expect((await s.fleet.agent(s.b.id).migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
    expect((await s.engine.exec('m1', { path: 'echo', args: ['there'] })).exitCode).toBe(0);
  });

  it('asks no content id of a base the destination does not hold: the disk moves whole', async () => {
    const s = await setup();
    closers.push(s.close);
    const [base] = s.vm.spec.disks[0]?.backing ?? [];
    expect(base).toBeDefined();
    s.remote.files.delete(base as string);
    const { task } = await s.engine.migrate('m1', { to: 'b' });
    const done = await s.engine.tasks.wait(task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect((done.result as MigrateResult).storage.sync).toEqual({ disk0: 'full' });
    expect([s.local.calls.get('contentId') ?? 0, s.remote.calls.get('contentId') ?? 0]).toEqual([0, 0]);
  });

  it('refuses a migration to its own host or an unknown one, and bad options, with stable codes', async () => {
    const s = await setup();
    closers.push(s.close);
    await expect(s.engine.migrate('m1', { to: 'a' })).rejects.toMatchObject({ code: 'MIGRATION_REFUSED' });
    await expect(s.engine.migrate('m1', { host: 'a' })).rejects.toMatchObject({ code: 'MIGRATION_REFUSED' });
    await expect(s.engine.migrate('m1', { to: 'nowhere' })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await expect(s.engine.migrate('m1', { to: 'b', postcopy: 'sometimes' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(s.engine.migrate('m1', { to: 'b', maxBandwidth: 'fast' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(s.engine.migrate('m1', {})).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    expect((await s.engine.resolve('m1')).state).toBe('running');
  });

  it('a cancel before the switch-over leaves the VM running at its source and nothing at the destination', async () => {
    const s = await setup(2_000);
    closers.push(s.close);
    const { task } = await s.engine.migrate('m1', { to: 'b' });
    await new Promise((r) => setTimeout(r, 700));
    const cancelled = await s.engine.cancelTask(task?.id as string);
    expect(cancelled.state).toBe('failed');
    expect(cancelled.error?.code).toBe('TASK_CANCELLED');
    const after = await s.engine.resolve('m1');
    expect([after.hostId, after.state, after.runtime?.pid]).toEqual([s.vm.hostId, 'running', s.vm.runtime?.pid]);
    expect(s.remote.vms.has(s.vm.id)).toBe(false);
    expect([...s.remote.files].some((f) => f.startsWith(`home:vms/${s.vm.id}/`))).toBe(false);
  });

  for (const step of ['openPath', 'prepareIncoming', 'migrateOut'] as const satisfies CallName[]) {
    it(`rolls back when ${step} fails: the VM runs on at its source, nothing at the destination, no path`, async () => {
      const s = await setup();
      closers.push(s.close);
      const agent = step === 'migrateOut' ? s.local : s.remote;
      agent.failNext(step, new OffshootError('QMP_COMMAND_FAILED', `injected: ${step}`, {}, 500));
      const { task } = await s.engine.migrate('m1', { to: 'b' });
      const done = await s.engine.tasks.wait(task?.id as string);
      expect(done.state).toBe('failed');
      expect(done.error?.code).toBe('QMP_COMMAND_FAILED');
      const after = await s.engine.resolve('m1');
      expect([after.hostId, after.state]).toEqual([s.vm.hostId, 'running']);
      expect(s.local.vms.get(s.vm.id)?.status).toBe('running');
      expect(s.remote.vms.has(s.vm.id)).toBe(false);
      for (const a of [s.fleet.agent(s.vm.hostId), s.fleet.agent(s.b.id)]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
    });
  }

  for (const switched of [false, true]) {
    it(`recovers a migration interrupted ${switched ? 'after' : 'before'} the destination ran the guest: ${switched ? 'finished forward' : 'rolled back'}`, async () => {
      const s = await setup();
      closers.push(s.close);
      const src = s.fleet.agent(s.vm.hostId);
      const dst = s.fleet.agent(s.b.id);
      // What a controller that died mid-migration left: its task with the journal, the path, a waiting destination (and a completed migration).
      const journal = { vmId: s.vm.id, phase: 'transfer', previous: 'running', sourceHostId: s.vm.hostId, destinationHostId: s.b.id, pathId: newOperationId(), prepareOperationId: newOperationId(), awaitOperationId: newOperationId(), migrateOperationId: newOperationId(), destinationSpec: s.vm.spec, destinationRuntime: null as unknown };
      const [sp, dp] = await Promise.all([src.migrationProbe({ peer: '10.254.7.2', files: [], installDefaultGuest: false }), dst.migrationProbe({ peer: '10.254.7.1', files: [], installDefaultGuest: false })]);
      const plan = planDataPath({ operationId: journal.pathId, serverManagementAddress: dp.managementAddress as string, clientManagementAddress: sp.managementAddress as string, inUse: [] });
      await dst.openPath({ plan, role: 'server', pskKey: 'ab'.repeat(16) });
      await src.openPath({ plan, role: 'client', pskKey: 'ab'.repeat(16) });
      const prepared = await runOperation(dst, 'prepareIncoming', { operationId: journal.prepareOperationId, vmId: s.vm.id, name: 'm1', spec: s.vm.spec, disks: [], pathId: journal.pathId, postcopy: false, multifdChannels: 1, tls: true, resume: true });
      journal.destinationRuntime = prepared.runtime;
      await dst.awaitIncoming({ operationId: journal.awaitOperationId, vmId: s.vm.id });
      if (switched) {
        await runOperation(src, 'migrateOut', { operationId: journal.migrateOperationId, vmId: s.vm.id, pathId: journal.pathId, migration: prepared.migration, nbd: null, disks: [], tuning: { maxBandwidthBytesPerSecond: 2 ** 30, downtimeLimitMs: 300, postcopy: 'never', autoConverge: false, multifdChannels: 1, timeoutMs: 60_000, tls: true }, hold: false });
        await new Promise((r) => setTimeout(r, 50));
      }
      await s.inventory.updateVm(s.vm.id, { state: 'migrating' });
      const now = new Date().toISOString();
      const taskId = '6f6f6f6f-0000-4000-8000-00000000ee01';
      await s.inventory.insertTask({ id: taskId, kind: 'vm.migrate', targetId: s.vm.id, targetName: 'm1', state: 'running', progress: 0.5, message: 'copying memory', result: { journal }, error: null, createdAt: now, updatedAt: now });
      await s.engine.recover();
      const task = await s.engine.tasks.get(taskId);
      expect(task.state).toBe('failed');
      expect(task.error?.code).toBe('TASK_INTERRUPTED');
      expect(task.message).toContain(switched ? 'finished' : 'rolled back');
      const after = await s.engine.resolve('m1');
      expect(after.state).toBe('running');
      expect(after.hostId).toBe(switched ? s.b.id : s.vm.hostId);
      expect(s.local.vms.has(s.vm.id)).toBe(!switched);
      expect(s.remote.vms.has(s.vm.id)).toBe(switched);
      for (const a of [src, dst]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
    });
  }
});
