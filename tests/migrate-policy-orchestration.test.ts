// Fast tests of migration policies, the per-host queue, host drain and
// cross-controller cancel (src/vm/migrate: policy.ts, admission.ts, drain.ts)
// against two fake agents (which pass the same migration contract as the
// real ones), a real SQLite inventory and the real engine and fleet. The
// policy values reach the source's agent (post-copy `always` from a host's
// policy shows in the result); with maxOutgoing=1 a second migration waits
// `queued` and runs once the first ended; a queued migration is cancelled
// with nothing moved; a drain moves two VMs one at a time and reports a
// stopped VM with local disks; a second engine over the same inventory shares
// the limits and cancels a migration the first one runs; so do two controllers
// with their own connections and fleets over one PostgreSQL. The same drain runs
// against real QEMU on lab hosts in tests/e2e/migrate-drain.test.ts.
import { describe, expect, it } from 'vitest';
import { OpenAPIHono } from '@hono/zod-openapi';
import { migrationPolicyRoutes } from '../src/api/migration-policy-routes.ts';
import { OffshootError, silentLogger, toOffshootError } from '../src/common/index.ts';
import { FakeAgent } from '../src/protocol/index.ts';
import { KyselyInventory } from '../src/store/index.ts';
import { freshTestDatabase } from '../src/store/pg-test-cluster.ts';
import type { DrainResult, ResolvedPolicy, TaskRecord } from '../src/vm/index.ts';
import { Fleet, StorageService, VmEngine, resolvePolicy } from '../src/vm/index.ts';
import { closedAfterEach, holdAt, serveAgent, twoHostFleet } from './fake-fleet.ts';

const TOKEN = 'p'.repeat(43);

async function setup(options: { migrateMs?: number; vms?: string[]; stopped?: string[] } = {}) {
  const s = await twoHostFleet({ prefix: 'opol-orch', subnet: '10.254.9', migrateMs: options.migrateMs ?? 0 });
  for (const name of options.vms ?? ['m1']) await s.running(name, 'a');
  for (const name of options.stopped ?? []) await s.engine.create({ name, start: false, host: 'a' });
  /** A second controller over the same inventory and hosts. */
  const another = () => s.addEngine({ coordination: { controllerId: 'controller-other' } });
  return { ...s, b: s.hostB, another };
}

/** The phases a task's progress showed, in order (from the engine's events). */
function phases(engine: VmEngine) {
  const seen: Array<{ taskId: string; phase: string | null; state: string }> = [];
  const off = engine.events.subscribe((e) => {
    if (e.type !== 'task') return;
    seen.push({ taskId: e.task.id, phase: (e.task.result as { progress?: { phase?: string } } | null)?.progress?.phase ?? null, state: e.task.state });
  });
  return { seen, off };
}

async function until(check: () => Promise<boolean> | boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('migration policies', () => {
  it('resolves each field: the migration > the source host (destination for maxIncoming) > the fleet > built-in', () => {
    const r = resolvePolicy({ request: { downtimeLimitMs: 50 }, source: { downtimeLimitMs: 80, postcopy: 'never', maxIncoming: 1 }, destination: { maxIncoming: 3, postcopy: 'always' }, fleet: { postcopy: 'always', maxOutgoing: 2, autoConverge: true } });
    expect(r).toMatchObject({ downtimeLimitMs: 50, postcopy: 'never', maxIncoming: 3, maxOutgoing: 2, autoConverge: true, maxBandwidthBytesPerSecond: 4 * 2 ** 30 });
    expect(r.sources).toEqual({ downtimeLimitMs: 'request', postcopy: 'host', maxIncoming: 'host', maxOutgoing: 'fleet', autoConverge: 'fleet', maxBandwidthBytesPerSecond: 'default' });
  });

  const closers = closedAfterEach();

  it("a migration uses the host's and the fleet's values where it names none, and says which in its result", async () => {
    const s = await setup();
    closers.push(s.close);
    await s.engine.migrationPolicies.set(undefined, { maxBandwidth: '200M', downtimeLimitMs: 120, maxOutgoing: 3 });
    const view = await s.engine.migrationPolicies.set('a', { postcopy: 'always', downtimeLimitMs: 90 });
    expect(view.host?.effective).toMatchObject({ postcopy: 'always', downtimeLimitMs: 90, maxBandwidthBytesPerSecond: 200 * 2 ** 20, maxOutgoing: 3 });
    const { task } = await s.engine.migrate('m1', { to: 'b', downtimeLimitMs: 40 });
    const done = await s.engine.tasks.wait(task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as { postcopy: boolean; policy: ResolvedPolicy; queuedMs: number };
    expect(result.policy).toMatchObject({ downtimeLimitMs: 40, postcopy: 'always', maxBandwidthBytesPerSecond: 200 * 2 ** 20, autoConverge: false, maxOutgoing: 3 });
    expect(result.policy.sources).toMatchObject({ downtimeLimitMs: 'request', postcopy: 'host', maxBandwidthBytesPerSecond: 'fleet', autoConverge: 'default', maxOutgoing: 'fleet' });
    // The host's post-copy `always` reached the source's agent.
    expect(result.postcopy).toBe(true);
    // Clearing the host's override: the fleet's values again.
    const cleared = await s.engine.migrationPolicies.clear('a');
    expect(cleared.host?.policy).toEqual({});
    expect(cleared.host?.effective.postcopy).toBe('auto');
    // null removes a field from the fleet's policy.
    expect((await s.engine.migrationPolicies.set(undefined, { downtimeLimitMs: null })).fleet).toEqual({ maxBandwidthBytesPerSecond: 200 * 2 ** 20, maxOutgoing: 3 });
  });

  it('answers the policy routes: PATCH sets (null removes), GET shows what applies, DELETE drops an override, bad values are 400 INVALID_INPUT', async () => {
    const s = await setup({ vms: [] });
    closers.push(s.close);
    const app = new OpenAPIHono();
    app.onError((err, c) => {
      const e = toOffshootError(err);
      return c.json(e.toJSON(), e.status as 400);
    });
    app.route('/', migrationPolicyRoutes(s.engine));
    const call = async (method: string, path: string, body?: unknown) => {
      const res = await app.request(path, { method, headers: { 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      return { status: res.status, body: (await res.json()) as Record<string, unknown> & { code?: string } };
    };
    expect((await call('PATCH', '/migration-policies', { maxOutgoing: 2, maxBandwidth: '1G' })).status).toBe(200);
    const hostSet = await call('PATCH', '/migration-policies?host=b', { maxIncoming: 1, postcopy: 'never' });
    expect(hostSet.body).toMatchObject({ fleet: { maxOutgoing: 2, maxBandwidthBytesPerSecond: 2 ** 30 }, host: { name: 'b', policy: { maxIncoming: 1, postcopy: 'never' }, effective: { maxIncoming: 1, maxOutgoing: 2, sources: { maxIncoming: 'host', maxOutgoing: 'fleet' } } } });
    expect((await call('GET', '/migration-policies')).body).toMatchObject({ hosts: [{ host: 'b', policy: { maxIncoming: 1 } }], effective: { maxOutgoing: 2, downtimeLimitMs: 300, sources: { downtimeLimitMs: 'default' } } });
    expect(((await call('PATCH', '/migration-policies?host=b', { postcopy: null })).body.host as { policy: unknown }).policy).toEqual({ maxIncoming: 1 });
    const bad = await call('PATCH', '/migration-policies', { maxIncoming: 0 });
    expect([bad.status, bad.body.code]).toEqual([400, 'INVALID_INPUT']);
    expect((await call('DELETE', '/migration-policies/hosts/b')).body).toMatchObject({ hosts: [], host: { policy: {} } });
    expect((await call('DELETE', '/migration-policies/hosts/nowhere')).body.code).toBe('NOT_FOUND');
    const drain = await call('POST', '/hosts/b/evacuate?wait=true', { to: 'b' });
    expect([drain.status, drain.body.code]).toEqual([409, 'DRAIN_REFUSED']);
  });

  it('refuses bad policy values with INVALID_INPUT and unknown hosts with NOT_FOUND, changing nothing', async () => {
    const s = await setup({ vms: [] });
    closers.push(s.close);
    for (const bad of [{ postcopy: 'sometimes' }, { maxOutgoing: 0 }, { maxIncoming: 1.5 }, { maxBandwidth: '10K' }, { maxBandwidth: 'fast' }, { downtimeLimitMs: -1 }, { colour: 'blue' }]) {
      await expect(s.engine.migrationPolicies.set(undefined, bad)).rejects.toMatchObject({ code: 'INVALID_INPUT' });
    }
    await expect(s.engine.migrationPolicies.set('nowhere', { maxOutgoing: 1 })).rejects.toMatchObject({ code: 'NOT_FOUND' });
    expect((await s.engine.migrationPolicies.show()).fleet).toEqual({});
  });
});

describe('migration queue and host drain', () => {
  const closers = closedAfterEach();

  it('with maxOutgoing=1 a second migration waits queued, then runs once the first ended (FIFO)', async () => {
    const s = await setup({ migrateMs: 800, vms: ['m1', 'm2', 'm3'] });
    closers.push(s.close);
    await s.engine.migrationPolicies.set('a', { maxOutgoing: 1 });
    const watch = phases(s.engine);
    const first = (await s.engine.migrate('m1', { to: 'b' })).task as TaskRecord;
    const second = (await s.engine.migrate('m2', { to: 'b' })).task as TaskRecord;
    const third = (await s.engine.migrate('m3', { to: 'b' })).task as TaskRecord;
    await until(async () => (await s.engine.tasks.get(third.id)).message.includes('position 2'), 'the third to be second in line');
    const queued = await s.engine.tasks.get(second.id);
    expect(queued.message).toMatch(/^queued \(position 1\)/);
    expect(queued.result).toMatchObject({ progress: { phase: 'queued', position: 1 } });
    expect((await s.engine.resolve('m2')).state).toBe('migrating');
    const results = await Promise.all([first, second, third].map((t) => s.engine.tasks.wait(t.id)));
    watch.off();
    for (const r of results) expect(r.state, JSON.stringify(r.error)).toBe('succeeded');
    // Each started only after the one before it ended.
    const ended = (id: string) => watch.seen.findIndex((e) => e.taskId === id && e.state === 'succeeded');
    const startedCopying = (id: string) => watch.seen.findIndex((e) => e.taskId === id && e.phase !== null && e.phase !== 'queued');
    expect(ended(first.id)).toBeLessThan(startedCopying(second.id));
    expect(ended(second.id)).toBeLessThan(startedCopying(third.id));
    expect((results[1]?.result as { queuedMs: number }).queuedMs).toBeGreaterThan(0);
    for (const name of ['m1', 'm2', 'm3']) expect((await s.engine.resolve(name)).hostId).toBe(s.b.id);
    expect(await s.inventory.migrationControl.queued()).toEqual([]);
  });

  it('a group counts each member; one needing more slots than a limit is refused with MIGRATION_LIMIT_EXCEEDED', async () => {
    const s = await setup({ vms: ['g1', 'g2'] });
    closers.push(s.close);
    await s.engine.migrationPolicies.set('b', { maxIncoming: 1 });
    await expect(s.engine.migrateGroup({ members: [{ vm: 'g1', to: 'b' }, { vm: 'g2', to: 'b' }] })).rejects.toMatchObject({ code: 'MIGRATION_LIMIT_EXCEEDED' });
    expect((await s.engine.resolve('g1')).state).toBe('running');
    await s.engine.migrationPolicies.set('b', { maxIncoming: 2 });
    const task = await s.engine.migrateGroup({ members: [{ vm: 'g1', to: 'b' }, { vm: 'g2', to: 'b' }] });
    const done = await s.engine.tasks.wait(task.id);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    expect(done.result).toMatchObject({ moved: ['g1', 'g2'], policy: { postcopy: 'never', maxIncoming: 2 } });
  });

  it('cancels a queued migration: it leaves the queue, its VM runs on at its source, the one before it still moves', async () => {
    const s = await setup({ migrateMs: 1_500, vms: ['m1', 'm2'] });
    closers.push(s.close);
    await s.engine.migrationPolicies.set('b', { maxIncoming: 1 });
    const first = (await s.engine.migrate('m1', { to: 'b' })).task as TaskRecord;
    const second = (await s.engine.migrate('m2', { to: 'b' })).task as TaskRecord;
    await until(async () => (await s.engine.tasks.get(second.id)).message.startsWith('queued'), 'the second to be queued');
    expect((await s.engine.tasks.get(second.id)).message).toContain('host b');
    const cancelled = await s.engine.cancelTask(second.id);
    expect([cancelled.state, cancelled.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    const m2 = await s.engine.resolve('m2');
    expect(m2.state).toBe('running');
    expect(s.remote.vms.has(m2.id)).toBe(false);
    expect((await s.inventory.migrationControl.queued()).map((e) => e.taskId)).not.toContain(second.id);
    expect((await s.engine.tasks.wait(first.id)).state).toBe('succeeded');
    expect((await s.engine.resolve('m1')).hostId).toBe(s.b.id);
    expect((await s.engine.resolve('m2')).hostId).not.toBe(s.b.id);
  });

  it('drains a host: two running VMs move one at a time (maxOutgoing=1), a stopped VM with local disks is reported, not lost', async () => {
    const s = await setup({ migrateMs: 600, vms: ['d1', 'd2'], stopped: ['cold'] });
    closers.push(s.close);
    await s.engine.migrationPolicies.set('a', { maxOutgoing: 1 });
    const watch = phases(s.engine);
    const task = await s.engine.drainHost('a');
    expect(task.kind).toBe('host.drain');
    expect(s.fleet.hosts().find((h) => h.name === 'a')?.state).toBe('draining');
    const done = await s.engine.tasks.wait(task.id);
    watch.off();
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const result = done.result as DrainResult;
    expect(result.host).toBe('a');
    expect(result.moved.map((m) => [m.vm, m.to])).toEqual([['d1', 'b'], ['d2', 'b']]);
    expect(result.notMoved).toHaveLength(1);
    expect(result.notMoved[0]).toMatchObject({ vm: 'cold', outcome: 'skipped', state: 'created' });
    expect(result.notMoved[0]?.reason).toContain('local to a');
    // One at a time: the second member left the queue only after the first ended.
    const [t1, t2] = result.moved.map((m) => m.taskId) as [string, string];
    const ended = watch.seen.findIndex((e) => e.taskId === t1 && e.state === 'succeeded');
    expect(watch.seen.some((e) => e.taskId === t2 && e.phase === 'queued')).toBe(true);
    expect(ended).toBeLessThan(watch.seen.findIndex((e) => e.taskId === t2 && e.phase !== null && e.phase !== 'queued'));
    for (const n of ['d1', 'd2']) expect(await s.engine.resolve(n)).toMatchObject({ hostId: s.b.id, state: 'running' });
    expect(await s.engine.resolve('cold')).toMatchObject({ state: 'created' });
    expect((await s.engine.resolve('cold')).hostId).not.toBe(s.b.id);
  });

  it('with --stopped move a drain also cold-moves the stopped VMs (their files go); a failed cold move leaves its VM at the host as it was', async () => {
    const s = await setup({ migrateMs: 200, vms: ['d1'], stopped: ['cold'] });
    closers.push(s.close);
    s.own(new StorageService({ inventory: s.inventory, storageInventory: s.inventory.storage, engine: s.engine, logger: silentLogger }));
    const cold = await s.engine.resolve('cold');
    const files = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${cold.id}/`)).sort();
    const coldFiles = files(s.local);
    expect(coldFiles.length).toBeGreaterThan(0);
    // The cold move's copy fails at the destination: the VM stays as it was; the running one moves.
    s.remote.failNext('fetchFile', new OffshootError('COPY_WORKER_FAILED', 'injected: the copy fails', {}, 500));
    const first = (await s.engine.tasks.wait((await s.engine.drainHost('a', { stopped: 'move' })).id)).result as DrainResult;
    expect(first.moved.map((m) => [m.vm, m.mode, m.to])).toEqual([['d1', 'live', 'b']]);
    expect(first.notMoved).toEqual([expect.objectContaining({ vm: 'cold', outcome: 'failed', code: 'COPY_WORKER_FAILED' })]);
    expect(first.notMoved[0]?.reason).toMatch(/cold move to b failed.*it stays on a as it was/);
    expect(await s.engine.resolve('cold')).toMatchObject({ hostId: cold.hostId, state: 'created' });
    expect([files(s.local), files(s.remote)]).toEqual([coldFiles, []]);
    // Without --stopped move it stays (the default), said so.
    expect((await s.engine.tasks.wait((await s.engine.drainHost('a')).id)).result).toMatchObject({ moved: [], notMoved: [{ vm: 'cold', outcome: 'skipped' }] });
    // Again with --stopped move: it goes, files and record.
    const third = (await s.engine.tasks.wait((await s.engine.drainHost('a', { stopped: 'move' })).id)).result as DrainResult;
    expect(third.moved).toEqual([expect.objectContaining({ vm: 'cold', mode: 'cold', to: 'b', downtimeMs: null })]);
    expect(third.notMoved).toEqual([]);
    expect(await s.engine.resolve('cold')).toMatchObject({ hostId: s.b.id, state: 'created' });
    expect(files(s.local)).toEqual([]);
    expect(files(s.remote)).toEqual(coldFiles);
  });

  it('a cancelled drain cancels its cold move before the re-home: the stopped VM stays at the host as it was', async () => {
    const hold = holdAt('move.before-rehome');
    const faults = hold.faults;
    const s = await twoHostFleet({ prefix: 'opol-orch', subnet: '10.254.9', faults });
    closers.push(s.close);
    await s.engine.create({ name: 'cold', start: false, host: 'a' });
    s.own(new StorageService({ inventory: s.inventory, storageInventory: s.inventory.storage, engine: s.engine, logger: silentLogger, faults }));
    const cold = await s.engine.resolve('cold');
    const files = (agent: FakeAgent) => [...agent.files].filter((f) => f.startsWith(`home:vms/${cold.id}/`)).sort();
    const coldFiles = files(s.local);
    const drain = await s.engine.drainHost('a', { stopped: 'move' });
    await hold.atPhase;
    const cancelling = s.engine.cancelTask(drain.id);
    await new Promise((r) => setTimeout(r, 200));
    hold.release();
    const cancelled = await cancelling;
    expect([cancelled.state, cancelled.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    const moves = (await s.engine.tasks.list()).filter((t) => t.kind === 'vm.move');
    expect(moves.map((t) => [t.state, t.error?.code])).toEqual([['failed', 'TASK_CANCELLED']]);
    expect(await s.engine.resolve('cold')).toMatchObject({ hostId: cold.hostId, state: 'created' });
    expect([files(s.local), files(s.remote)]).toEqual([coldFiles, []]);
  });

  it('a drain reports a member whose migration failed; that VM runs on at the source', async () => {
    const s = await setup({ vms: ['f1'] });
    closers.push(s.close);
    s.remote.failNext('prepareIncoming', new OffshootError('QMP_COMMAND_FAILED', 'injected: the destination cannot prepare', {}, 500));
    const done = await s.engine.tasks.wait((await s.engine.drainHost('a', { to: 'b' })).id);
    expect(done.state).toBe('succeeded');
    const result = done.result as DrainResult;
    expect(result.moved).toEqual([]);
    expect(result.notMoved[0]).toMatchObject({ vm: 'f1', outcome: 'failed' });
    expect(result.notMoved[0]?.reason).toContain('runs on at a');
    expect((await s.engine.resolve('f1')).state).toBe('running');
    await expect(s.engine.drainHost('a', { to: 'a' })).rejects.toMatchObject({ code: 'DRAIN_REFUSED' });
  });
});

describe('recovery of queued migrations and drains', () => {
  const closers = closedAfterEach();

  it('a migration interrupted while queued returns its VM to its state; an interrupted drain ends saying its members recover each', async () => {
    const s = await setup();
    closers.push(s.close);
    const vm = await s.engine.resolve('m1');
    await s.inventory.updateVm(vm.id, { state: 'migrating' });
    const now = new Date().toISOString();
    const queued = { id: '6f6f6f6f-0000-4000-8000-00000000ee11', kind: 'vm.migrate', targetId: vm.id, targetName: 'm1', state: 'running' as const, progress: 0, message: 'queued (position 1)', result: { journal: { vmId: vm.id, phase: 'queued', previous: 'running', sourceHostId: vm.hostId, destinationHostId: s.b.id } }, error: null, createdAt: now, updatedAt: now };
    const drain = { ...queued, id: '6f6f6f6f-0000-4000-8000-00000000ee12', kind: 'host.drain', targetId: vm.hostId, targetName: 'a', message: '0 of 1 VM(s) moved', result: null };
    await s.inventory.insertTask(queued);
    await s.inventory.insertTask(drain);
    await s.engine.recover();
    const [q, d] = [await s.engine.tasks.get(queued.id), await s.engine.tasks.get(drain.id)];
    expect([q.state, q.error?.code]).toEqual(['failed', 'TASK_INTERRUPTED']);
    expect(q.message).toContain('queued: nothing had moved');
    expect(await s.engine.resolve('m1')).toMatchObject({ state: 'running', hostId: vm.hostId });
    expect([d.state, d.error?.code]).toEqual(['failed', 'TASK_INTERRUPTED']);
    expect(d.message).toContain('each member migration is recovered on its own');
  });
});

describe('migrations across two controllers over one inventory', () => {
  const closers = closedAfterEach();

  it('share the limits, and a cancel asked on the other controller stops a running and a queued migration', async () => {
    const s = await setup({ migrateMs: 3_000, vms: ['c1', 'c2', 'c3'] });
    closers.push(s.close);
    const other = s.another();
    await s.engine.migrationPolicies.set('a', { maxOutgoing: 1 });
    const first = (await s.engine.migrate('c1', { to: 'b' })).task as TaskRecord;
    await until(async () => !(await s.engine.tasks.get(first.id)).message.startsWith('queued') && (await s.engine.tasks.get(first.id)).progress > 0, 'the first to run');
    // The other controller's migration waits for the slot the first holds.
    const second = (await other.migrate('c2', { to: 'b' })).task as TaskRecord;
    await until(async () => (await other.tasks.get(second.id)).message.startsWith('queued'), 'the second to be queued');
    // Cancel the first (run by engine) from the other controller, and the second (run by other) from engine.
    const [a, b] = await Promise.all([other.cancelTask(first.id), s.engine.cancelTask(second.id)]);
    expect([a.state, a.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    expect([b.state, b.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    for (const n of ['c1', 'c2']) expect((await s.engine.resolve(n)).state).toBe('running');
    expect((await s.engine.resolve('c1')).hostId).not.toBe(s.b.id);
    // The slot is free again: a third migration runs at once.
    const third = await s.engine.tasks.wait(((await other.migrate('c3', { to: 'b' })).task as TaskRecord).id);
    expect(third.state, JSON.stringify(third.error)).toBe('succeeded');
    expect((await s.engine.resolve('c3')).hostId).toBe(s.b.id);
  });
});

/** Two controllers, each with its own PostgreSQL connection, fleet and engine, over one database; both hosts served over HTTP. */
async function twoControllers() {
  const url = await freshTestDatabase('opol_two');
  const fakes = [new FakeAgent({ hostId: 'fake-a', managementAddress: '10.254.9.1', migrateMs: 3_000 }), new FakeAgent({ hostId: 'fake-b', managementAddress: '10.254.9.2', migrateMs: 3_000 })];
  const servers = await Promise.all(fakes.map((f) => serveAgent(f, TOKEN)));
  const controllers: Array<{ inventory: KyselyInventory; fleet: Fleet; engine: VmEngine }> = [];
  for (const id of ['ctl-one', 'ctl-two']) {
    const inventory = await KyselyInventory.open(url);
    const fleet = new Fleet({ inventory: inventory.hosts, vmsOn: async (h) => (await inventory.listVms()).filter((v) => v.hostId === h).length, heartbeatMs: 100, leaseMs: 2_000, monitor: { owner: id, claims: inventory.claims } });
    await fleet.start();
    if (controllers.length === 0) for (const [i, name] of ['a', 'b'].entries()) await fleet.add({ name, url: servers[i]?.url as string, token: TOKEN });
    const engine = new VmEngine({ inventory, fleet, logger: silentLogger, coordination: { controllerId: id } });
    controllers.push({ inventory, fleet, engine });
  }
  const close = async () => {
    for (const c of controllers) {
      await c.engine.close();
      await c.fleet.close();
    }
    for (const s of servers) await s.close();
    for (const c of controllers) await c.inventory.close();
  };
  return { controllers: controllers as [(typeof controllers)[number], (typeof controllers)[number]], close };
}

describe('migrations across two controllers over PostgreSQL', () => {
  const closers = closedAfterEach();

  it('share the queue and the slots, and cancel each other\'s running and queued migrations through the task row', async () => {
    const { controllers, close } = await twoControllers();
    closers.push(close);
    const [one, two] = controllers;
    await until(() => two.fleet.hosts().length === 2, 'the second controller to see both hosts');
    for (const name of ['p1', 'p2', 'p3']) {
      const { task } = await one.engine.create({ name, start: true, host: 'a' });
      expect((await one.engine.tasks.wait(task?.id as string)).state).toBe('succeeded');
    }
    // Set on one controller, applied by the other.
    await two.engine.migrationPolicies.set('a', { maxOutgoing: 1 });
    const first = (await one.engine.migrate('p1', { to: 'b' })).task as TaskRecord;
    await until(async () => (await one.engine.tasks.get(first.id)).progress > 0, 'the first to run');
    const second = (await two.engine.migrate('p2', { to: 'b' })).task as TaskRecord;
    await until(async () => (await two.engine.tasks.get(second.id)).message.startsWith('queued (position 1)'), 'the second to wait for the first one\'s slot');
    const [a, b] = await Promise.all([two.engine.cancelTask(first.id), one.engine.cancelTask(second.id)]);
    expect([a.state, a.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    expect([b.state, b.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    for (const n of ['p1', 'p2']) expect(await one.engine.resolve(n)).toMatchObject({ state: 'running', hostId: (await one.engine.resolve('p3')).hostId });
    expect(await one.inventory.migrationControl.queued()).toEqual([]);
    const third = await two.engine.tasks.wait(((await two.engine.migrate('p3', { to: 'b' })).task as TaskRecord).id);
    expect(third.state, JSON.stringify(third.error)).toBe('succeeded');
  }, 60_000);
});
