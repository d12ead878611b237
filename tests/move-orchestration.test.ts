// Fast tests of `vm move` (src/vm/storage/move-vm.ts) against two fake agents
// that pass the agent contract: the controller's own host `a` in process and
// `b` over HTTP, with the real engine, fleet, storage service and SQLite
// inventory. A live move runs the migration and answers the move plan (what
// it skips and sends) beside its task; a cold move of a stopped VM whose bases
// the destination holds sends its disks' tops only and re-homes it (it starts
// there); a copy failing mid-move leaves the VM at its source as it was and
// nothing at the destination; a cold move of a running VM is refused with
// ILLEGAL_STATE. A live move with --datastore uses only the destination's
// copies of the bases in that datastore (seeded there: the migration mirrors
// the top; seeded elsewhere there: the disk moves whole), and a datastore the
// destination does not see (or none of that name) is refused before anything
// moves; with --verify a seeded copy whose bytes differ is not used. A
// `task cancel` of a move, cold (after a file was sent, before the re-home)
// or live (path, transfer), leaves the VM at its source as it was and nothing
// at the destination; a cold move whose controller died is cleaned up by the
// next one from its journal (the files of the side the VM is not on go).
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/index.ts';
import type { FakeAgent } from '../src/protocol/index.ts';
import type { ColdMoveResult, MigrateResult } from '../src/vm/index.ts';
import { StorageService } from '../src/vm/index.ts';
import { codeOf } from '../src/protocol/contract-support.ts';
import { closedAfterEach, holdAt, twoHostFleet } from './fake-fleet.ts';

/** `faults`: the engine's and the storage service's fault points (a test holds one to act at that phase). */
async function setup(faults?: (point: string) => Promise<void>) {
  const s = await twoHostFleet({ prefix: 'omv-orch', subnet: '10.254.11', ...(faults ? { faults } : {}) });
  const { inventory, engine } = s;
  const storage = s.own(new StorageService({ inventory, storageInventory: inventory.storage, engine, logger: silentLogger, ...(faults ? { faults } : {}) }));
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

  it('moves live over the destination\'s copies in the datastore asked (verified when asked); refuses a datastore the destination does not see', async () => {
    const fleet = await setup();
    closers.push(fleet.close);
    // A controller whose migrations know the recorded content ids of datastore disks (as the daemon's does).
    const engine = fleet.addEngine({ contentIdsOf: async (files) => Object.fromEntries((await fleet.inventory.storage.listDisks()).filter((d) => files.includes(d.file)).map((d) => [d.file, d.contentId])) });
    const s = { ...fleet, engine, storage: fleet.own(new StorageService({ inventory: fleet.inventory, storageInventory: fleet.inventory.storage, engine, logger: silentLogger })) };
    await s.storage.ensureDefaultDatastores();
    await s.storage.catalog.addDatastore({ name: 'b-other', path: '/srv/omv-orch/other', host: 'b' });
    await fleet.running('mv2', 'a');
    const base = await s.storage.catalog.createDisk({ datastore: 'a-local', name: 'base', size: '1G' });
    for (const name of ['mv', 'mv2']) {
      const { task: stopped } = await s.engine.stop(name);
      if (stopped) expect((await s.engine.tasks.wait(stopped.id)).state).toBe('succeeded');
      await s.storage.attachDisk(name, { disk: base.id });
    }
    const seeded = await s.storage.seeder.seed(base.id, { to: 'b-local' });
    expect((await s.storage.jobs.wait(seeded.job?.id as string)).state).toBe('succeeded');
    for (const name of ['mv', 'mv2']) {
      const started = await s.engine.start(name);
      expect((await s.engine.tasks.wait(started.task?.id as string)).state).toBe('succeeded');
    }
    const bLocal = await s.storage.catalog.datastore('b-local');
    const other = await s.storage.catalog.datastore('b-other');
    const attached = (await s.engine.resolve('mv')).spec.disks.find((d) => d.backing.includes(base.file));
    expect(attached).toBeDefined();
    const diskId = attached?.id as string;

    // Refused before anything moves: a datastore of the source only, and one that does not exist.
    const refused = await s.storage.mover.move('mv', { to: 'b', datastore: 'a-local' }).catch((e: unknown) => e as Error & { code: string });
    expect((refused as { code: string }).code).toBe('INVALID_INPUT');
    expect((refused as Error).message).toContain('a-local is not on host b');
    expect(await codeOf(s.storage.mover.move('mv', { to: 'b', datastore: 'nowhere' }))).toBe('NOT_FOUND');
    expect((await s.engine.resolve('mv')).hostId).not.toBe(s.hostB.id);
    expect((await s.engine.resolve('mv')).state).toBe('running');

    // The seeded copy in b-local: the top only travels, over that copy.
    const over = await s.storage.mover.move('mv', { to: 'b', datastore: 'b-local' });
    expect(over.disks.find((d) => d.diskId === diskId)?.skipAll).toBe(true);
    const done = await s.engine.tasks.wait(over.task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect((done.result as MigrateResult).storage.sync[diskId]).toBe('top');
    const there = (await s.engine.resolve('mv')).spec.disks.find((d) => d.id === diskId);
    expect(there?.backing.length).toBe(1);
    expect(there?.backing[0]?.startsWith(`ds.${bLocal.id}:`)).toBe(true);

    // Back to a (its original base, by content id), then to b asking for b-other, which holds no copy: sent whole.
    const back = await s.storage.mover.move('mv', { to: 'a' });
    expect((await s.engine.tasks.wait(back.task.id)).state).toBe('succeeded');
    const whole = await s.storage.mover.move('mv', { to: 'b', datastore: 'b-other' });
    const planned = whole.disks.find((d) => d.diskId === diskId);
    expect([planned?.heldLayers, planned?.skippedBytes]).toEqual([0, 0]);
    expect(whole.sent.map((d) => d.disk)).toContain(diskId);
    const wholeDone = await s.engine.tasks.wait(whole.task.id);
    expect(wholeDone.state, JSON.stringify(wholeDone.error)).toBe('succeeded');
    expect((wholeDone.result as MigrateResult).storage.sync[diskId]).toBe('full');
    const moved = await s.engine.resolve('mv');
    expect(moved.hostId).toBe(s.hostB.id);
    expect(moved.spec.disks.find((d) => d.id === diskId)?.backing).toEqual([]);
    expect(other.hosts.map((h) => h.hostId)).toEqual([s.hostB.id]);

    // --verify reaches the migration: a seeded copy whose bytes differ is not used (the other VM's disk moves whole).
    const copy = (await s.storage.catalog.listDisks()).find((d) => d.datastore === 'b-local' && d.contentId === base.contentId);
    expect(copy).toBeDefined();
    s.remote.content.set(copy?.file as string, 'tampered');
    const checked = await s.storage.mover.move('mv2', { to: 'b', datastore: 'b-local', verify: true });
    expect(checked.disks.find((d) => d.diskId === diskId)?.mismatch?.file).toBe(copy?.file);
    const checkedDone = await s.engine.tasks.wait(checked.task.id);
    expect(checkedDone.state, JSON.stringify(checkedDone.error)).toBe('succeeded');
    expect((checkedDone.result as MigrateResult).storage.sync[diskId]).toBe('full');
  });

  it('refuses a cold move whose VM another move re-homed between its plan and its start (MOVE_PLAN_STALE): the moved disks stay', async () => {
    const hold = holdAt('move.planned');
    const s = await setup(hold.faults);
    closers.push(s.close);
    const { task: stopping } = await s.engine.stop('mv');
    if (stopping) expect((await s.engine.tasks.wait(stopping.id)).state).toBe('succeeded');
    const vm = await s.engine.resolve('mv');
    const own = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${vm.id}/`)).sort();
    const late = s.storage.mover.move('mv', { to: 'b', mode: 'cold' });
    late.catch(() => undefined);
    await hold.atPhase;
    const first = await s.storage.mover.move('mv', { to: 'b', mode: 'cold' });
    expect((await s.engine.tasks.wait(first.task.id)).state).toBe('succeeded');
    const moved = own(s.b);
    expect(moved.length).toBeGreaterThan(0);
    hold.release();
    expect(await codeOf(late)).toBe('MOVE_PLAN_STALE');
    expect(await s.engine.resolve('mv')).toMatchObject({ hostId: s.hostB.id, state: 'stopped' });
    expect(own(s.b)).toEqual(moved);
    expect(own(s.a)).toEqual([]);
  });

  for (const phase of ['move.sent-file', 'move.before-rehome']) {
    it(`a cancel of a cold move at ${phase} leaves the VM stopped at its source as it was and nothing at the destination`, async () => {
      const hold = holdAt(phase);
      const s = await setup(hold.faults);
      closers.push(s.close);
      const { task: stopping } = await s.engine.stop('mv');
      if (stopping) expect((await s.engine.tasks.wait(stopping.id)).state).toBe('succeeded');
      const before = await s.engine.resolve('mv');
      const own = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${before.id}/`)).sort();
      const sourceFiles = own(s.a);
      const started = await s.storage.mover.move('mv', { to: 'b', mode: 'cold' });
      await hold.atPhase;
      if (phase === 'move.sent-file') expect(own(s.b).length).toBeGreaterThan(0);
      const cancelling = s.engine.cancelTask(started.task.id);
      await new Promise((r) => setTimeout(r, 200));
      hold.release();
      const cancelled = await cancelling;
      expect(cancelled.state).toBe('failed');
      expect(cancelled.error?.code).toBe('TASK_CANCELLED');
      const after = await s.engine.resolve('mv');
      expect([after.hostId, after.state]).toEqual([before.hostId, 'stopped']);
      expect(after.spec).toEqual(before.spec);
      expect(own(s.a)).toEqual(sourceFiles);
      expect(own(s.b)).toEqual([]);
      const restarted = await s.engine.start('mv');
      expect((await s.engine.tasks.wait(restarted.task?.id as string)).state).toBe('succeeded');
    });
  }

  for (const phase of ['migrate.path', 'migrate.transfer']) {
    it(`a cancel of a live move at ${phase} leaves the VM running at its source in the same QEMU and nothing at the destination`, async () => {
      const hold = holdAt(phase);
      const s = await setup(hold.faults);
      closers.push(s.close);
      const before = await s.engine.resolve('mv');
      const started = await s.storage.mover.move('mv', { to: 'b' });
      await hold.atPhase;
      const cancelling = s.engine.cancelTask(started.task.id);
      await new Promise((r) => setTimeout(r, 200));
      hold.release();
      const cancelled = await cancelling;
      expect(cancelled.state).toBe('failed');
      expect(cancelled.error?.code).toBe('TASK_CANCELLED');
      const after = await s.engine.resolve('mv');
      expect([after.hostId, after.state, after.runtime?.pid]).toEqual([before.hostId, 'running', before.runtime?.pid]);
      expect(s.b.vms.has(before.id)).toBe(false);
      expect([...s.b.files].some((f) => f.startsWith(`home:vms/${before.id}/`))).toBe(false);
    });
  }

  for (const rehomed of [false, true]) {
    it(`recovers a cold move whose controller died ${rehomed ? 'after' : 'before'} the re-home: the files of the side the VM is not on go`, async () => {
      const s = await setup();
      closers.push(s.close);
      const { task: stopping } = await s.engine.stop('mv');
      if (stopping) expect((await s.engine.tasks.wait(stopping.id)).state).toBe('succeeded');
      const vm = await s.engine.resolve('mv');
      const own = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${vm.id}/`)).sort();
      // What a controller that died mid-move left: its task with the journal, and the VM's files on both hosts.
      const files = own(s.a);
      for (const f of files) s.b.files.add(f);
      if (rehomed) await s.inventory.updateVm(vm.id, { hostId: s.hostB.id });
      const now = new Date().toISOString();
      const taskId = '6f6f6f6f-0000-4000-8000-00000000ee13';
      const journal = { vmId: vm.id, sourceHostId: vm.hostId, destinationHostId: s.hostB.id };
      await s.inventory.insertTask({ id: taskId, kind: 'vm.move', targetId: vm.id, targetName: 'mv', state: 'running', progress: 0.5, message: 'sending disk disk0', result: { journal }, error: null, createdAt: now, updatedAt: now });
      await s.engine.recover();
      const task = await s.engine.tasks.get(taskId);
      expect(task.state).toBe('failed');
      expect(task.error?.code).toBe('TASK_INTERRUPTED');
      expect(task.message).toContain(rehomed ? 're-homed' : 'rolled back');
      const after = await s.engine.resolve('mv');
      expect([after.hostId, after.state]).toEqual([rehomed ? s.hostB.id : vm.hostId, 'stopped']);
      expect(own(s.a)).toEqual(rehomed ? [] : files);
      expect(own(s.b)).toEqual(rehomed ? files : []);
      const restarted = await s.engine.start('mv');
      expect((await s.engine.tasks.wait(restarted.task?.id as string)).state).toBe('succeeded');
      expect((await s.engine.resolve('mv')).hostId).toBe(rehomed ? s.hostB.id : vm.hostId);
    });
  }

  it('recovers a cold move whose controller died mid-fetch: the fetch still running at the destination is stopped before its files go', async () => {
    const s = await setup();
    closers.push(s.close);
    const { task: stopping } = await s.engine.stop('mv');
    if (stopping) expect((await s.engine.tasks.wait(stopping.id)).state).toBe('succeeded');
    const vm = await s.engine.resolve('mv');
    const [first] = vm.spec.disks;
    if (!first) throw new Error('the VM has no disk');
    const disk = first.file;
    // The dead controller's fetch of the VM's disk: started at b, still copying (held) when the controller died.
    const a = s.engine.fleet.agent(vm.hostId);
    const b = s.engine.fleet.agent(s.hostB.id);
    const served = await a.openFileServer({ file: disk, peer: '10.254.11.2' });
    const release = s.b.hold('fetchFile');
    const operationId = '6f6f6f6f-0000-4000-8000-00000000ee14';
    await b.fetchFile({ operationId, source: { url: served.url, token: served.token }, sourceName: disk, target: disk });
    const now = new Date().toISOString();
    const taskId = '6f6f6f6f-0000-4000-8000-00000000ee15';
    const journal = { vmId: vm.id, sourceHostId: vm.hostId, destinationHostId: s.hostB.id, fetchOperationId: operationId };
    await s.inventory.insertTask({ id: taskId, kind: 'vm.move', targetId: vm.id, targetName: 'mv', state: 'running', progress: 0.5, message: 'sending disk disk0', result: { journal }, error: null, createdAt: now, updatedAt: now });
    const deletes = s.b.calls.get('deleteVmFiles') ?? 0;
    const recovering = s.engine.recover();
    // The fetch goes on (as the real copy engine does until its chunk in flight is written) until recovery has
    // removed the VM's files at b, or for 2 s if recovery waits for the fetch to end first.
    for (let waited = 0; waited < 2_000 && (s.b.calls.get('deleteVmFiles') ?? 0) === deletes; waited += 20) await new Promise((r) => setTimeout(r, 20));
    release();
    await recovering;
    const task = await s.engine.tasks.get(taskId);
    expect(task.message).toContain('rolled back');
    const fetched = (await b.getOperation({ operationId, afterSeq: 0, waitMs: 0, until: 'event' })).operation;
    expect(fetched.state).not.toBe('running');
    // Without the stop, the fetch wrote the disk at b after recovery had removed the VM's files there.
    expect([...s.b.files].filter((f) => f.startsWith(`home:vms/${vm.id}/`))).toEqual([]);
    expect((await s.engine.resolve('mv')).hostId).toBe(vm.hostId);
  });
});
