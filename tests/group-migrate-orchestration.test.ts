// Fast tests of the group migration orchestration (src/vm/migrate/run-group.ts)
// against two fake agents (which pass the migration contract as the real ones
// do): a real SQLite inventory, the real engine and fleet, the controller's own
// fake host in process and a second fake host over HTTP. A group moves in one
// switch-over; a member failing before the commit leaves every member at its
// source (consistent) or moves the others and reports the split (available);
// a cancel before the commit leaves all at their sources; destinations are
// started only once every member arrived, and a member lost after another
// completed sends all back (consistent) or is reported (available); a
// controller that died before the start rolls back on recovery, after it
// finishes. The same runs against real QEMU on lab hosts in
// tests/e2e/group-migrate.test.ts.
import { describe, expect, it } from 'vitest';
import { OffshootError, silentLogger } from '../src/common/index.ts';
import type { GroupMigrateResult } from '../src/vm/index.ts';
import { VmEngine } from '../src/vm/index.ts';
import { closedAfterEach, holdAt, twoHostFleet } from './fake-fleet.ts';

async function setup(migrateMs = 0, faults?: (point: string) => Promise<void> | void) {
  const s = await twoHostFleet({ prefix: 'ogr-orch', subnet: '10.254.9', migrateMs, ...(faults ? { faults } : {}) });
  const { engine, fleet, local, remote, hostB: b } = s;
  for (const name of ['g1', 'g2']) await s.running(name, 'a');
  const vms = [await engine.resolve('g1'), await engine.resolve('g2')];
  const atSource = async () => {
    for (const vm of vms) {
      const after = await engine.resolve(vm.id);
      expect([after.hostId, after.state, after.runtime?.pid]).toEqual([vm.hostId, 'running', vm.runtime?.pid]);
      expect(local.vms.get(vm.id)?.status).toBe('running');
      expect(remote.vms.has(vm.id)).toBe(false);
      expect([...remote.files].some((f) => f.startsWith(`home:vms/${vm.id}/`))).toBe(false);
    }
    for (const a of [fleet.agent(vms[0]?.hostId as string), fleet.agent(b.id)]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
  };
  return { ...s, vms, b, atSource };
}

const members = [
  { vm: 'g1', to: 'b' },
  { vm: 'g2', to: 'b' },
];

describe('group migration orchestration against fake agents', () => {
  const closers = closedAfterEach();

  it('moves every member in one switch-over and reports downtime per member and the spread', async () => {
    const s = await setup(600);
    closers.push(s.close);
    const task = await s.engine.migrateGroup({ members });
    expect(task.kind).toBe('vm.migrate-group');
    for (const name of ['g1', 'g2']) expect((await s.engine.resolve(name)).state).toBe('migrating');
    await expect(s.engine.stop('g2')).rejects.toMatchObject({ code: 'ILLEGAL_STATE' });
    const done = await s.engine.tasks.wait(task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as GroupMigrateResult;
    expect(result).toMatchObject({ mode: 'consistent', moved: ['g1', 'g2'], stayed: [] });
    expect(typeof result.spreadMs).toBe('number');
    expect(typeof result.heldSpreadMs).toBe('number');
    for (const m of result.members) {
      expect(m).toMatchObject({ state: 'moved', from: 'a', to: 'b', error: null });
      expect(typeof m.downtimeMs).toBe('number');
      expect(typeof m.heldMs).toBe('number');
      expect(typeof m.startDelayMs).toBe('number');
      // Its whole stop, phase by phase: the parts add up to it.
      const b = m.breakdown;
      expect(b).not.toBeNull();
      // The source's STOP time can be missing (its agent did not read the event): then only the controller's parts are known.
      if (b?.reachMs !== null) expect((b?.reachMs ?? 0) + (b?.heldMs ?? 0) + (b?.switchMs ?? 0) + (b?.waitMs ?? 0) + (b?.startMs ?? 0)).toBe(m.stoppedMs);
      else expect(m.stoppedMs).toBeNull();
    }
    // Each member started its pre-copy braked and the pacer started it (full speed) through its source.
    expect(s.local.calls.get('setMigrationParameters') ?? 0).toBeGreaterThanOrEqual(2);
    for (const vm of s.vms) {
      const moved = await s.engine.resolve(vm.id);
      expect([moved.hostId, moved.state]).toEqual([s.b.id, 'running']);
      expect(s.local.vms.has(vm.id)).toBe(false);
      expect(s.remote.vms.get(vm.id)?.status).toBe('running');
    }
    for (const a of [s.fleet.agent(s.vms[0]?.hostId as string), s.fleet.agent(s.b.id)]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
  });

  for (const by of ['its source', 'the controller'] as const) {
    it(`a member that reaches its switch-over while the other is in its first pass is sent back by ${by} and goes again; both move together`, async () => {
      const s = await setup(600);
      closers.push(s.close);
      const [g1, g2] = s.vms as [(typeof s.vms)[0], (typeof s.vms)[0]];
      // g1's first migration outruns its brake: at its switch-over at once, while g2 is still short of its first pass's
      // end. Its source, not allowed to hold it, sends it back; or (holdRegardless) it waits held and the controller does.
      s.local.outrunBrakes.set(g1.id, 1);
      s.local.holdRegardless.on = by === 'the controller';
      const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members })).id);
      expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
      const result = done.result as GroupMigrateResult;
      expect(result.moved).toEqual(['g1', 'g2']);
      const byName = new Map(result.members.map((m) => [m.vm, m]));
      expect(byName.get('g1')?.sentBackMs).toHaveLength(1);
      expect(byName.get('g1')?.sentBackMs[0]).toBeGreaterThanOrEqual(0);
      expect(byName.get('g2')?.sentBackMs).toEqual([]);
      expect(s.local.outrunBrakes.get(g1.id)).toBe(0);
      // Its second migration went on a new path and reached its switch-over with the other (released, not alone).
      expect(s.local.calls.get('migrateOut')).toBe(3);
      expect(s.remote.calls.get('prepareIncoming')).toBe(3);
      expect(s.remote.calls.get('abortIncoming') ?? 0).toBeGreaterThanOrEqual(1);
      for (const vm of [g1, g2]) {
        const moved = await s.engine.resolve(vm.id);
        expect([moved.hostId, moved.state]).toEqual([s.b.id, 'running']);
        expect(s.local.vms.has(vm.id)).toBe(false);
        expect(s.remote.vms.get(vm.id)?.status).toBe('running');
      }
      for (const a of [s.fleet.agent(g1.hostId), s.fleet.agent(s.b.id)]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
    });
  }

  it('a cancel while a member is sent back leaves every member at its source, nothing left of either of its attempts', async () => {
    const hold = holdAt('migrate-group.sent-back');
    const s = await setup(600, hold.faults);
    closers.push(s.close);
    s.local.outrunBrakes.set((s.vms[0] as (typeof s.vms)[0]).id, 1);
    const task = await s.engine.migrateGroup({ members });
    await hold.atPhase;
    const cancelling = s.engine.cancelTask(task.id);
    await new Promise((r) => setTimeout(r, 100));
    hold.release();
    const cancelled = await cancelling;
    expect(cancelled.state).toBe('failed');
    expect(cancelled.error?.code).toBe('TASK_CANCELLED');
    const done = await s.engine.tasks.wait(task.id);
    expect(done.error?.code).toBe('TASK_CANCELLED');
    await s.atSource();
  });

  it('refuses bad groups with stable codes and claims nothing', async () => {
    const s = await setup();
    closers.push(s.close);
    await expect(s.engine.migrateGroup({ members: [] })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(s.engine.migrateGroup({ members, mode: 'eventually' })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(s.engine.migrateGroup({ members: [...members, { vm: 'g1', to: 'b' }] })).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    await expect(s.engine.migrateGroup({ members: [{ vm: 'g1', to: 'b' }, { vm: 'g2', to: 'a' }] })).rejects.toMatchObject({ code: 'MIGRATION_REFUSED' });
    await expect(s.engine.migrateGroup({ members: [{ vm: 'g1', to: 'nowhere' }] })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    await s.atSource();
  });

  for (const step of ['prepareIncoming', 'migrateOut'] as const) {
    it(`consistent: a member failing at ${step} before the commit leaves every member at its source`, async () => {
      const s = await setup(300);
      closers.push(s.close);
      (step === 'migrateOut' ? s.local : s.remote).failNext(step, new OffshootError('QMP_COMMAND_FAILED', `injected: ${step}`, {}, 500));
      const task = await s.engine.migrateGroup({ members, mode: 'consistent' });
      const done = await s.engine.tasks.wait(task.id);
      expect(done.state).toBe('failed');
      expect(done.error?.code).toBe('GROUP_MIGRATION_FAILED');
      expect(done.error?.message).toContain('injected');
      await s.atSource();
    });
  }

  it('available: a member failing before the commit stays at its source, the other moves, and the result says which', async () => {
    const s = await setup(300);
    closers.push(s.close);
    s.remote.failNext('prepareIncoming', new OffshootError('QMP_COMMAND_FAILED', 'injected: prepareIncoming', {}, 500));
    const task = await s.engine.migrateGroup({ members, mode: 'available' });
    const done = await s.engine.tasks.wait(task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as GroupMigrateResult;
    expect(result.moved).toHaveLength(1);
    expect(result.stayed).toHaveLength(1);
    const stayed = result.members.find((m) => m.state === 'stayed');
    expect(stayed?.error?.code).toBe('QMP_COMMAND_FAILED');
    const movedVm = await s.engine.resolve(result.moved[0] as string);
    const stayedVm = await s.engine.resolve(result.stayed[0] as string);
    expect([movedVm.hostId, movedVm.state]).toEqual([s.b.id, 'running']);
    expect([stayedVm.hostId, stayedVm.state]).toEqual([s.vms[0]?.hostId, 'running']);
    expect(s.remote.vms.has(stayedVm.id)).toBe(false);
    expect(s.local.vms.get(stayedVm.id)?.status).toBe('running');
  });

  it('a cancel before the commit leaves every member at its source', async () => {
    const s = await setup(2_000);
    closers.push(s.close);
    const task = await s.engine.migrateGroup({ members });
    await new Promise((r) => setTimeout(r, 700));
    const cancelled = await s.engine.cancelTask(task.id);
    expect(cancelled.state).toBe('failed');
    expect(cancelled.error?.code).toBe('TASK_CANCELLED');
    await s.atSource();
  });
  /** At the commit (every member held), the destination of g2 dies: g1 completes and waits paused, g2's migration completes at its source but not at its destination. */
  const killSecondDestination =
    (s: Awaited<ReturnType<typeof setup>>, at = 'migrate-group.commit') =>
    async (point: string) => {
      if (point === at) await s.fleet.agent(s.b.id).abortIncoming({ vmId: s.vms[1]?.id as string });
    };

  it('starts the destinations only once every member arrived: none runs before the start, all at once after it', async () => {
    const seen: Array<Array<string | undefined>> = [];
    const ref: { s?: Awaited<ReturnType<typeof setup>> } = {};
    const s = await setup(300, (point) => {
      if (point === 'migrate-group.start' && ref.s) seen.push(ref.s.vms.map((vm) => ref.s?.remote.vms.get(vm.id)?.status));
    });
    ref.s = s;
    closers.push(s.close);
    const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members })).id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    // At the start every destination had the guest, paused (arrived), and none ran it.
    expect(seen).toEqual([['paused', 'paused']]);
    expect(s.remote.calls.get('startIncoming')).toBe(2);
    for (const vm of s.vms) expect(s.remote.vms.get(vm.id)?.status).toBe('running');
  });

  it('consistent: a member lost after another completed sends every member back to its source, in the same QEMU', async () => {
    const ref: { s?: Awaited<ReturnType<typeof setup>> } = {};
    const s = await setup(300, (point) => (ref.s ? killSecondDestination(ref.s)(point) : undefined));
    ref.s = s;
    closers.push(s.close);
    const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members, mode: 'consistent' })).id);
    expect(done.state).toBe('failed');
    expect(done.error?.code).toBe('GROUP_MIGRATION_FAILED');
    expect(done.error?.message).toContain('every member runs on at its source');
    // g1 had completed (its source in postmigrate) and was sent back: reverted, never started.
    expect(s.local.calls.get('revertOutgoing')).toBe(2);
    expect(s.remote.calls.get('startIncoming') ?? 0).toBe(0);
    await s.atSource();
  });

  it('consistent: a destination lost after every member arrived, before the start, sends every member back', async () => {
    const ref: { s?: Awaited<ReturnType<typeof setup>> } = {};
    const s = await setup(300, (point) => (ref.s ? killSecondDestination(ref.s, 'migrate-group.arrived')(point) : undefined));
    ref.s = s;
    closers.push(s.close);
    const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members })).id);
    expect(done.state).toBe('failed');
    expect(done.error?.message).toContain('no longer holds its guest');
    expect(s.remote.calls.get('startIncoming') ?? 0).toBe(0);
    await s.atSource();
  });

  it('available: a member lost after another completed stays at its source, the other moves, and the result says which', async () => {
    const ref: { s?: Awaited<ReturnType<typeof setup>> } = {};
    const s = await setup(300, (point) => (ref.s ? killSecondDestination(ref.s)(point) : undefined));
    ref.s = s;
    closers.push(s.close);
    const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members, mode: 'available' })).id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as GroupMigrateResult;
    expect([result.moved, result.stayed]).toEqual([['g1'], ['g2']]);
    expect(result.members[1]?.error?.code).toBe('MIGRATION_FAILED');
    const [g1, g2] = [await s.engine.resolve('g1'), await s.engine.resolve('g2')];
    expect([g1.hostId, g1.state, g2.hostId, g2.state]).toEqual([s.b.id, 'running', s.vms[1]?.hostId, 'running']);
    expect(s.local.vms.get(g2.id)?.status).toBe('running');
    expect(s.remote.vms.has(g2.id)).toBe(false);
  });

  it('a destination that fails at the start: that member runs on at its source and the group is reported split', async () => {
    const s = await setup(300);
    closers.push(s.close);
    s.remote.failNext('startIncoming', new OffshootError('MIGRATION_FAILED', 'injected: startIncoming', {}, 500));
    const done = await s.engine.tasks.wait((await s.engine.migrateGroup({ members })).id);
    expect(done.state).toBe('failed');
    expect(done.error?.message).toContain('split at its start');
    const after = await Promise.all(s.vms.map((vm) => s.engine.resolve(vm.id)));
    expect(after.map((vm) => vm.state)).toEqual(['running', 'running']);
    expect(after.filter((vm) => vm.hostId === s.b.id)).toHaveLength(1);
    for (const vm of after) expect((vm.hostId === s.b.id ? s.remote : s.local).vms.get(vm.id)?.status).toBe('running');
  });

  it('a controller that died while a member was sent back: recovery rolls every member back, nothing left of either attempt', async () => {
    let die!: (err: Error) => void;
    const dead = new Promise<void>((_, reject) => (die = reject));
    dead.catch(() => undefined);
    let reached!: () => void;
    const atPoint = new Promise<void>((r) => (reached = r));
    const s = await setup(300, (p) => {
      if (p !== 'migrate-group.sent-back') return undefined;
      reached();
      return dead;
    });
    closers.push(async () => {
      die(new Error('the old controller goes'));
      await new Promise((r) => setTimeout(r, 50));
      await s.close();
    });
    s.local.outrunBrakes.set((s.vms[0] as (typeof s.vms)[0]).id, 1);
    const task = await s.engine.migrateGroup({ members });
    await atPoint;
    const next = new VmEngine({ inventory: s.inventory, fleet: s.fleet, logger: silentLogger, coordination: { controllerId: s.engine.controllerId } });
    closers.unshift(() => next.close());
    await next.recover();
    expect((await next.tasks.get(task.id)).error?.code).toBe('TASK_INTERRUPTED');
    await s.atSource();
  });

  for (const point of ['migrate-group.commit', 'migrate-group.start'] as const) {
    const forward = point === 'migrate-group.start';
    it(`a controller that died at ${point}: recovery ${forward ? 'starts the held destinations and finishes the group' : 'rolls every member back'}`, async () => {
      let die!: (err: Error) => void;
      const dead = new Promise<void>((_, reject) => (die = reject));
      dead.catch(() => undefined);
      const s = await setup(300, (p) => (p === point ? dead : undefined));
      closers.push(async () => {
        die(new Error('the old controller goes'));
        await new Promise((r) => setTimeout(r, 50));
        await s.close();
      });
      const task = await s.engine.migrateGroup({ members });
      // The controller hangs at the fault point (as dead); another one on the same inventory recovers its task.
      for (let i = 0; i < 100 && !(await s.engine.tasks.get(task.id)).message.includes('switching'); i++) await new Promise((r) => setTimeout(r, 50));
      await new Promise((r) => setTimeout(r, 300));
      const next = new VmEngine({ inventory: s.inventory, fleet: s.fleet, logger: silentLogger, coordination: { controllerId: s.engine.controllerId } });
      closers.unshift(() => next.close());
      await next.recover();
      const recovered = await next.tasks.get(task.id);
      expect(recovered.error?.code).toBe('TASK_INTERRUPTED');
      for (const vm of s.vms) {
        const after = await next.resolve(vm.id);
        expect([after.hostId, after.state]).toEqual([forward ? s.b.id : vm.hostId, 'running']);
        expect((forward ? s.remote : s.local).vms.get(vm.id)?.status).toBe('running');
        expect((forward ? s.local : s.remote).vms.has(vm.id)).toBe(false);
      }
      for (const a of [s.fleet.agent(s.vms[0]?.hostId as string), s.fleet.agent(s.b.id)]) expect((await a.migrationProbe({ peer: null, files: [], installDefaultGuest: false })).slotsInUse).toEqual([]);
    });
  }
});
