// The destination's agent stops answering in the middle of a migration
// (orchestration against fake agents: the controller's own fake host in
// process, the destination a fake host over HTTP whose server is shut, with
// its connections, and opened again on the same port):
// - during pre-copy: the controller stops the transfer at once (it does not
//   finish it into a host nobody controls) and rolls back; the VM runs on at
//   its source in the same QEMU; when the destination answers again, its
//   re-adoption reaps what the migration left there;
// - during the switch-over (the source can no longer go back): the VM is
//   recorded at the destination, `unknown` (never failed, never restarted at
//   the source), the source lets it go, and when the destination answers
//   again the VM runs there and the task succeeds.
// The same with real QEMU on lab hosts: tests/e2e/migrate-faults2.test.ts.
import { describe, expect, it } from 'vitest';
import type { MigrateResult, MigrationProgress, VmEngine } from '../src/vm/index.ts';
import { closedAfterEach, twoHostFleet } from './fake-fleet.ts';
import { eventually } from './harness.ts';

async function setup() {
  const s = await twoHostFleet({ prefix: 'omfu-orch', subnet: '10.254.9', migrateMs: 1_600, leaseMs: 1_000 });
  const vm = await s.running('m1', 'a');
  // down: the destination stops answering (its server closes and drops every connection); back: it answers again.
  return { ...s, down: s.served.close, back: s.served.reopen, vm, b: s.hostB };
}

/** Resolves when the task reports a migration progress in `phase`. */
function phaseReached(engine: VmEngine, taskId: string, phase: string): Promise<void> {
  return new Promise((resolve) => {
    const off = engine.events.subscribe((e) => {
      const p = e.type === 'task' && e.task.id === taskId ? (e.task.result as { progress?: MigrationProgress } | null)?.progress : undefined;
      if (p?.phase === phase) {
        off();
        resolve();
      }
    });
  });
}

describe('migration orchestration: the destination stops answering', () => {
  const closers = closedAfterEach();

  it('during pre-copy: the transfer stops at once and rolls back; the destination is cleaned when it answers again', async () => {
    const s = await setup();
    closers.push(s.close);
    const { task } = await s.engine.migrate('m1', { to: 'b' });
    await phaseReached(s.engine, task?.id as string, 'memory');
    await s.down();
    const started = Date.now();
    const done = await s.engine.tasks.wait(task?.id as string);
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('MIGRATION_FAILED');
    expect(done.error?.message).toMatch(/destination b failed/);
    // Stopped by the watch, not by the end of the copy (which the fake source would finish by itself).
    expect(Date.now() - started).toBeLessThan(5_000);
    const after = await s.engine.resolve('m1');
    expect([after.hostId, after.state, after.runtime?.pid]).toEqual([s.vm.hostId, 'running', s.vm.runtime?.pid]);
    expect(s.local.vms.get(s.vm.id)?.status).toBe('running');
    // The destination's waiting QEMU and files are still there (it did not answer the roll-back) ...
    expect(s.remote.vms.get(s.vm.id)?.incoming).toBe(true);
    await eventually(() => s.fleet.hosts().find((h) => h.id === s.b.id)?.state === 'unreachable', 10_000, 'the destination to miss its lease');
    await s.back();
    // ... until it answers again: its re-adoption reaps them.
    await eventually(() => !s.remote.vms.has(s.vm.id) && ![...s.remote.files].some((f) => f.startsWith(`home:vms/${s.vm.id}/`)), 15_000, 'the destination to be cleaned');
    expect((await s.engine.resolve('m1')).state).toBe('running');
  });

  it('during the switch-over: the VM is recorded at the destination, unknown, and runs there when it answers again', async () => {
    const s = await setup();
    closers.push(s.close);
    const states: string[] = [];
    const off = s.engine.events.subscribe((e) => {
      if (e.type === 'vm.state' && e.vm.id === s.vm.id) states.push(e.vm.state);
    });
    const { task } = await s.engine.migrate('m1', { to: 'b' });
    await phaseReached(s.engine, task?.id as string, 'switching');
    await s.down();
    await eventually(async () => (await s.engine.resolve('m1')).hostId === s.b.id, 15_000, 'the VM to be recorded at the destination');
    const moved = await s.engine.resolve('m1');
    expect(moved.state).toBe('unknown');
    expect(moved.stateReason).toMatch(/stopped answering/);
    // The source let it go; nothing restarted it there.
    await eventually(() => !s.local.vms.has(s.vm.id), 5_000, 'the source to let the VM go');
    expect((await s.engine.tasks.get(task?.id as string)).state).toBe('running');
    await s.back();
    const done = await s.engine.tasks.wait(task?.id as string);
    off();
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect((done.result as MigrateResult).destinationConfirmed).toBe(true);
    const after = await s.engine.resolve('m1');
    expect([after.hostId, after.state]).toEqual([s.b.id, 'running']);
    expect(after.runtime?.hostId).toBe('fake-b');
    expect(states).not.toContain('failed');
    expect(s.local.vms.has(s.vm.id)).toBe(false);
    expect((await s.fleet.agent(s.b.id).migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
  });
});
