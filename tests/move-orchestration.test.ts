// Fast tests of `vm move` (src/vm/storage/move-vm.ts) against two fake agents
// that pass the agent contract: the controller's own host `a` in process and
// `b` over HTTP, with the real engine, fleet, storage service and SQLite
// inventory. A live move runs the migration and answers the move plan (what
// it skips and sends) beside its task; a cold move of a stopped VM whose bases
// the destination holds sends its disks' tops only and re-homes it (it starts
// there); a copy failing mid-move leaves the VM at its source as it was and
// nothing at the destination; a cold move of a running VM is refused with
// ILLEGAL_STATE.
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/index.ts';
import type { FakeAgent } from '../src/protocol/index.ts';
import type { ColdMoveResult } from '../src/vm/index.ts';
import { StorageService } from '../src/vm/index.ts';
import { codeOf } from '../src/protocol/contract-support.ts';
import { closedAfterEach, twoHostFleet } from './fake-fleet.ts';

async function setup() {
  const s = await twoHostFleet({ prefix: 'omv-orch', subnet: '10.254.11' });
  const { inventory, engine } = s;
  const storage = s.own(new StorageService({ inventory, storageInventory: inventory.storage, engine, logger: silentLogger }));
  await s.running('mv', 'a');
  return { ...s, a: s.local, b: s.remote, storage };
}

describe('vm move against fake agents', () => {
  const closers = closedAfterEach();

  it('moves a running VM live by default: the migration runs and the answer lists what the plan skips and sends', async () => {
    const s = await setup();
    closers.push(s.close);
    const started = await s.storage.mover.move('mv', { to: 'b' });
    expect(started.mode).toBe('live');
    expect([started.from, started.to]).toEqual(['a', 'b']);
    expect(started.disks.length).toBeGreaterThan(0);
    expect(started.skippedBytes).toBe(started.skipped.reduce((n, d) => n + d.bytes, 0));
    expect(started.sendBytes).toBe(started.sent.reduce((n, d) => n + d.bytes, 0));
    expect(started.task.kind).toBe('vm.migrate');
    const done = await s.engine.tasks.wait(started.task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const vm = await s.engine.resolve('mv');
    expect(vm.hostId).toBe(s.hostB.id);
    expect(vm.state).toBe('running');
  });

  it('refuses a cold move of a running VM; a copy failing mid-move leaves the VM at its source and nothing at the destination', async () => {
    const s = await setup();
    closers.push(s.close);
    const before = await s.engine.resolve('mv');
    const own = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${before.id}/`)).sort();
    expect(await codeOf(s.storage.mover.move('mv', { to: 'b', mode: 'cold' }))).toBe('ILLEGAL_STATE');
    expect(await codeOf(s.storage.mover.move('mv', { to: 'a' }))).toBe('INVALID_INPUT');
    expect(await codeOf(s.storage.mover.move('mv', { to: 'b', bogus: 1 }))).toBe('INVALID_INPUT');
    const { task } = await s.engine.stop('mv');
    if (task) expect((await s.engine.tasks.wait(task.id)).state).toBe('succeeded');
    expect(await codeOf(s.storage.mover.move('mv', { to: 'b', mode: 'live' }))).toBe('ILLEGAL_STATE');
    const stopped = await s.engine.resolve('mv');
    const sourceFiles = own(s.a);
    s.b.failNext('fetchFile');
    const started = await s.storage.mover.move('mv', { to: 'b' });
    expect(started.mode).toBe('cold');
    const failed = await s.engine.tasks.wait(started.task.id);
    expect(failed.state).toBe('failed');
    const after = await s.engine.resolve('mv');
    expect(after.hostId).toBe(before.hostId);
    expect(after.state).toBe('stopped');
    expect(after.spec).toEqual(stopped.spec);
    expect(own(s.a)).toEqual(sourceFiles);
    expect(own(s.b)).toEqual([]);
    // The VM is not left busy: it starts at its source.
    const restarted = await s.engine.start('mv');
    expect((await s.engine.tasks.wait(restarted.task?.id as string)).state).toBe('succeeded');
  });

  it('moves a stopped VM cold: only the tops of its disks travel, it is re-homed in one step and starts at the destination', async () => {
    const s = await setup();
    closers.push(s.close);
    const { task } = await s.engine.stop('mv');
    if (task) expect((await s.engine.tasks.wait(task.id)).state).toBe('succeeded');
    const before = await s.engine.resolve('mv');
    const own = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${before.id}/`)).sort();
    const plan = await s.storage.movePlan('mv', { to: 'b' });
    const started = await s.storage.mover.move('mv', { to: 'b', mode: 'cold' });
    expect(started.task.kind).toBe('vm.move');
    const done = await s.engine.tasks.wait(started.task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as ColdMoveResult;
    expect(result.sent.map((d) => d.disk).sort()).toEqual(before.spec.disks.map((d) => d.id).sort());
    expect(result.sent.every((d) => d.bytes > 0)).toBe(true);
    expect(result.skipped.map((d) => d.disk)).toEqual(plan.disks.filter((d) => d.heldLayers > 0).map((d) => d.diskId));
    expect(result.skipped.length).toBeGreaterThan(0);
    expect(result.skippedBytes).toBe(plan.skippedBytes);
    expect(result.totalMs).toBeGreaterThanOrEqual(0);
    const moved = await s.engine.resolve('mv');
    expect(moved.hostId).toBe(s.hostB.id);
    expect(own(s.a)).toEqual([]);
    expect(own(s.b)).toEqual(before.spec.disks.map((d) => d.file).sort());
    for (const d of moved.spec.disks) {
      const p = plan.disks.find((x) => x.diskId === d.id);
      if (d.backing.length) expect(s.b.backing.get(d.file)).toBe(p?.destBacking[0]?.file);
    }
    const restarted = await s.engine.start('mv');
    expect((await s.engine.tasks.wait(restarted.task?.id as string)).state).toBe('succeeded');
    expect((await s.engine.resolve('mv')).hostId).toBe(s.hostB.id);
  });
});
