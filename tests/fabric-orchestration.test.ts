// Fast tests of the fabric's orchestration (src/vm/fabric) against the fake
// agent, which passes the same contract as the real one: a real SQLite
// inventory, the real engine, fleet and fabric service, a host whose "QEMU"
// lives in memory. The pool keeper fills, refills after claims, shrinks and
// holds within a memory budget, and makes no child while a claim hands one of
// the pool out; claims never share a child and fork on demand when the pool
// is empty; template delete refuses while children
// exist and with --force leaves claimed children running. The same paths run
// against real QEMU in tests/e2e/fabric.test.ts.
import { describe, expect, it } from 'vitest';
import { silentLogger, sleep } from '../src/common/index.ts';
import type { TemplateView } from '../src/vm/index.ts';
import { FabricService, VmEngine, poolKey } from '../src/vm/index.ts';
import { codeOf } from '../src/protocol/contract-support.ts';
import { closedAfterEach, oneHostFleet } from './fake-fleet.ts';

async function setup() {
  const s = await oneHostFleet({ prefix: 'osh-fabric-orch' });
  const { inventory, engine } = s;
  const fabric = s.own(new FabricService({ inventory, fabric: inventory.fabric, engine, logger: silentLogger, readyTimeoutMs: 5_000, reconcileMs: 60_000 }));
  await fabric.start();
  const template = async (name: string): Promise<TemplateView> => {
    const { task } = await engine.create({ name: `${name}-src`, start: true });
    expect((await engine.tasks.wait(task?.id as string)).state).toBe('succeeded');
    const made = await fabric.create({ name, from: `${name}-src` });
    const done = await engine.tasks.wait(made.task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    return fabric.show(name);
  };
  const pool = async (name: string) => (await fabric.show(name)).placements[0]?.children;
  return { ...s, agent: s.local, fabric, template, pool };
}

describe('fabric orchestration against the fake agent', () => {
  const closers = closedAfterEach();

  it('makes a template of a running VM, which runs on; name clashes and bad input have codes', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    expect(t.state).toBe('ready');
    expect(t.placements).toHaveLength(1);
    expect(t.placements[0]?.state).toBe('ready');
    expect(t.placements[0]?.memoryTemplateId).toBeTruthy();
    expect((await s.engine.resolve('web-src')).state).toBe('running');
    expect(s.agent.hostTemplates.has(t.id)).toBe(true);
    expect(await codeOf(s.fabric.create({ name: 'web', from: 'web-src' }))).toBe('ALREADY_EXISTS');
    expect(await codeOf(s.fabric.create({ name: 'bad name!', from: 'web-src' }))).toBe('INVALID_INPUT');
    expect(await codeOf(s.fabric.create({ name: 'other', from: 'nope' }))).toBe('NOT_FOUND');
    expect(await codeOf(s.fabric.show('nope'))).toBe('NOT_FOUND');
    expect(await codeOf(s.fabric.scale('web', { ready: -1 }))).toBe('INVALID_INPUT');
    expect((await s.fabric.list()).map((x) => x.name)).toEqual(['web']);
  });

  it('keeps K ready children (paused), refills after claims, shrinks when K falls', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.template('web');
    await s.fabric.scale('web', { ready: 3 }, { wait: true });
    expect(await s.pool('web')).toMatchObject({ ready: 3, filling: 0, claimed: 0 });
    const members = await s.inventory.fabric.listMembers({ state: 'ready' });
    for (const m of members) expect((await s.engine.resolve(m.vmId)).state).toBe('paused');

    const claimed = await s.fabric.claim('web', { name: 'job1', hostname: 'job-one', env: ['A=1'], customize: 'echo hi' });
    expect(claimed.source).toBe('pool');
    expect(claimed.vm.name).toBe('job1');
    expect(claimed.vm.state).toBe('running');
    expect(claimed.hostname).toBe('job-one');
    expect(members.map((m) => m.vmId)).toContain(claimed.vm.id);
    expect(claimed.script?.exitCode).toBe(0);
    await s.fabric.keeper.settled();
    expect(await s.pool('web')).toMatchObject({ ready: 3, claimed: 1 });

    await s.fabric.scale('web', { ready: 1 }, { wait: true });
    expect(await s.pool('web')).toMatchObject({ ready: 1, claimed: 1 });
    // The retired children are gone, VM records and all; the claimed one runs on.
    const vms = await s.engine.list();
    expect(vms.filter((v) => v.state === 'paused')).toHaveLength(1);
    expect((await s.engine.resolve('job1')).state).toBe('running');
  });

  it('gives concurrent claims different children and forks on demand when the pool is empty', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.template('web');
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    const results = await Promise.all(Array.from({ length: 4 }, () => s.fabric.claim('web', {})));
    const ids = results.map((r) => r.vm.id);
    expect(new Set(ids).size).toBe(4);
    expect(results.filter((r) => r.source === 'pool')).toHaveLength(2);
    expect(results.filter((r) => r.source === 'on-demand')).toHaveLength(2);
    for (const r of results) expect(r.vm.state).toBe('running');
    await s.fabric.keeper.settled();
    expect(await s.pool('web')).toMatchObject({ ready: 2, claimed: 4 });
  });

  it('makes no new pool child while a claim hands one of the pool out, and fills once the hand-outs ended', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    const p = t.placements[0] as (typeof t.placements)[number];
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    // Another hand-out of the pool runs (a wave of claims): the refill behind this claim waits for it.
    const handingOut = s.fabric.keeper.handOutStarted(t.id, p.hostId);
    const claimed = await s.fabric.claim('web', {});
    expect(claimed.source).toBe('pool');
    await sleep(300);
    expect(await s.pool('web')).toMatchObject({ ready: 1, filling: 0, claimed: 1 });
    handingOut();
    await s.fabric.keeper.settled();
    expect(await s.pool('web')).toMatchObject({ ready: 2, claimed: 1 });
  });

  it('holds a pool within its memory budget and says so', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    // The fake's template holds a quarter of its memory; a child not yet measured counts 48 MiB.
    const held = (t.memoryMiB * 2 ** 20) / 4;
    await s.fabric.scale('web', { ready: 4, maxMemory: `${Math.ceil(held / 2 ** 20) + 40}M` }, { wait: true });
    let p = (await s.fabric.show('web')).placements[0];
    expect(p?.children.ready).toBe(0);
    expect(p?.pool.maxMemoryBytes).toBe((Math.ceil(held / 2 ** 20) + 40) * 2 ** 20);
    expect(p?.poolNote).toMatch(/held at 0 children by its memory budget/);
    await s.fabric.scale('web', { ready: 4, maxMemory: null }, { wait: true });
    p = (await s.fabric.show('web')).placements[0];
    expect(p?.children.ready).toBe(4);
    expect(p?.poolNote).toBeNull();
  });

  it("pins a template's memory and files in the inventory while it exists, and leaves a pool another controller works on to it", async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    const p = t.placements[0] as (typeof t.placements)[number];
    const pinned = (await s.inventory.pins.list({ holder: `fabric:${t.id}` })).map((x) => x.path).sort();
    expect(pinned).toEqual([`template:${p.memoryTemplateId}`, ...p.files].sort());
    // Another controller holds the pool's claim (it refills it): this one makes nothing.
    const other = await s.inventory.claims.acquire(poolKey(t.id, p.hostId), 'other-controller', 'template.refill', 60_000);
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    expect(await s.pool('web')).toMatchObject({ ready: 0, filling: 0 });
    await s.inventory.claims.release(other);
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    expect(await s.pool('web')).toMatchObject({ ready: 2 });
    await s.fabric.delete('web', { force: true });
    expect(await s.inventory.pins.list({ holder: `fabric:${t.id}` })).toEqual([]);
  });

  it('refuses to delete a template with children; --force removes its pool and leaves claimed children running', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    const claimed = await s.fabric.claim('web', { name: 'keeper' });
    await s.fabric.keeper.settled();
    expect(await codeOf(s.fabric.delete('web'))).toBe('TEMPLATE_IN_USE');
    await s.fabric.delete('web', { force: true });
    expect(await codeOf(s.fabric.show('web'))).toBe('NOT_FOUND');
    expect(s.agent.hostTemplates.has(t.id)).toBe(false);
    const vms = await s.engine.list();
    expect(vms.map((v) => [v.name, v.state]).sort()).toEqual([
      ['keeper', 'running'],
      ['web-src', 'running'],
    ]);
    // The claimed child still maps the template's memory, so the host keeps it.
    expect(s.agent.templates.has(claimed.vm.runtime?.memory.templateId as string)).toBe(true);
    expect(await s.inventory.fabric.listMembers()).toEqual([]);
  });

  it('deletes a template without children; a claimed child that was deleted no longer holds it', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.template('web');
    const claimed = await s.fabric.claim('web', {});
    expect(claimed.source).toBe('on-demand');
    expect(await codeOf(s.fabric.delete('web'))).toBe('TEMPLATE_IN_USE');
    await s.engine.kill(claimed.vm.name);
    await s.engine.delete(claimed.vm.name);
    await s.fabric.delete('web');
    expect(await s.fabric.list()).toEqual([]);
  });

  it('refills the pool at start after a controller restart, and retires a ready child whose QEMU died', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.template('web');
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    const [first] = await s.inventory.fabric.listMembers({ state: 'ready' });
    // Its VM goes from the inventory behind the fabric's back (as a user's vm kill + delete would).
    await s.engine.kill(first?.vmId as string);
    await s.engine.delete(first?.vmId as string);
    await s.fabric.close();
    const again = new FabricService({ inventory: s.inventory, fabric: s.inventory.fabric, engine: s.engine, logger: silentLogger, readyTimeoutMs: 5_000, reconcileMs: 60_000 });
    closers.unshift(() => again.close());
    await again.start();
    await again.keeper.settled();
    const members = await s.inventory.fabric.listMembers({ state: 'ready' });
    expect(members).toHaveLength(2);
    expect(members.map((m) => m.vmId)).not.toContain(first?.vmId);
  });

  it('marks a template whose host copy lost its memory broken, with the reason; its ready children go and claims are refused', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    s.agent.templates.delete(t.placements[0]?.memoryTemplateId as string);
    // The check runs at start (and periodically): a second service over the same inventory runs it now.
    await s.fabric.close();
    const again = new FabricService({ inventory: s.inventory, fabric: s.inventory.fabric, engine: s.engine, logger: silentLogger, readyTimeoutMs: 5_000, reconcileMs: 60_000 });
    closers.unshift(() => again.close());
    await again.start();
    const broken = await again.show('web');
    expect(broken.state).toBe('broken');
    expect(broken.stateReason).toMatch(/lost memory template/);
    expect(broken.placements[0]?.state).toBe('broken');
    expect(broken.placements[0]?.children.ready).toBe(0);
    expect((await s.engine.list()).map((v) => v.name)).toEqual(['web-src']);
    expect(await codeOf(again.claim('web', {}))).toBe('TEMPLATE_BROKEN');
    expect(await codeOf(again.scale('web', { ready: 1 }))).toBe('ILLEGAL_STATE');
    await again.delete('web');
    expect(await again.list()).toEqual([]);
  });

  it('skips a ready child whose QEMU died (removing it) and hands out the next one', async () => {
    const s = await setup();
    closers.push(s.close);
    await s.template('web');
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    // In the order a claim takes them: ready first (then by id); listMembers lists them by creation.
    const byBytes = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
    const ready = (await s.inventory.fabric.listMembers({ state: 'ready' })).sort((a, b) => byBytes(a.readyAt ?? '', b.readyAt ?? '') || byBytes(a.vmId, b.vmId));
    const [oldest, next] = ready;
    // Its QEMU is gone before the controller heard of it (no exit event yet), so the claim finds it dead: the
    // exit event would otherwise race the claim and retire it first.
    s.agent.vms.delete(oldest?.vmId as string);
    const claimed = await s.fabric.claim('web', {});
    expect(claimed.source).toBe('pool');
    expect(claimed.vm.id).toBe(next?.vmId);
    expect(claimed.skipped.map((x) => x.vm)).toEqual([oldest?.vmId]);
    expect(await s.inventory.getVm(oldest?.vmId as string)).toBeUndefined();
  });

  it('rolls back a template creation whose controller died after the freeze was prepared: the VM runs on, nothing of the template stays', async () => {
    const s = await setup();
    closers.push(s.close);
    const { task: boot } = await s.engine.create({ name: 'src', start: true });
    expect((await s.engine.tasks.wait(boot?.id as string)).state).toBe('succeeded');
    const filesBefore = [...s.agent.files].sort();
    // The first controller stops for good right after preparing the freeze (its task left running with its journal).
    let release: (err: Error) => void = () => undefined;
    const gate = new Promise<void>((_, reject) => (release = reject));
    const dying = new FabricService({ inventory: s.inventory, fabric: s.inventory.fabric, engine: s.engine, logger: silentLogger, faults: (point) => (point === 'template.prepared' ? gate : undefined) });
    const made = await dying.create({ name: 'web', from: 'src' });
    await waitUntil(async () => (await s.engine.tasks.get(made.task?.id as string)).message.includes('freezing'));
    await waitUntil(async () => s.agent.forks.size > 0 && [...s.agent.forks.values()].every((f) => f.made.length > 0 || f.frozen.length > 0));
    try {
      // A controller starting meanwhile leaves a creation whose task still runs alone.
      const bystander = new FabricService({ inventory: s.inventory, fabric: s.inventory.fabric, engine: s.engine, logger: silentLogger, reconcileMs: 60_000 });
      await bystander.start();
      expect((await bystander.list()).map((x) => [x.name, x.state, x.taskId])).toEqual([['web', 'creating', made.task?.id]]);
      await bystander.close();
      // The controller's next life (same id) recovers: its engine rolls the freeze back from the journal, its fabric drops the template.
      const engine = new VmEngine({ inventory: s.inventory, fleet: s.fleet, logger: silentLogger, coordination: { controllerId: s.engine.controllerId } });
      const report = await engine.recover();
      expect(report.adopted).toContain('src');
      const task = await engine.tasks.get(made.task?.id as string);
      expect(task.state).toBe('failed');
      expect(task.error?.code).toBe('TASK_INTERRUPTED');
      await s.fabric.close();
      const again = new FabricService({ inventory: s.inventory, fabric: s.inventory.fabric, engine, logger: silentLogger, reconcileMs: 60_000 });
      closers.unshift(async () => {
        await again.close();
        await engine.close();
      });
      await again.start();
      expect(await again.list()).toEqual([]);
      expect((await engine.resolve('src')).state).toBe('running');
      expect(s.agent.hostTemplates.size).toBe(0);
      await engine.collectGarbage();
      expect([...s.agent.files].sort()).toEqual(filesBefore);
    } finally {
      release(new Error('the controller is gone'));
    }
    // The dead controller's work ends (as its process would have): nothing changes.
    await s.engine.tasks.wait(made.task?.id as string).catch(() => undefined);
    expect((await s.engine.resolve('src')).state).toBe('running');
  });

  it('has the host set the clock of a paused or on-demand child at its hand-out, and not of a warm one (its clock ran since its warm-up set it); only a warm-up arms a waiter', async () => {
    const s = await setup();
    closers.push(s.close);
    const handOuts: Array<{ vmId: string; resume: boolean; setClock?: boolean; script?: string; arm?: boolean }> = [];
    const endpoint = s.agent.endpoint;
    const dispatch = endpoint.dispatch.bind(endpoint);
    endpoint.dispatch = (name, raw, meta) => {
      if (name === 'handOutChild') handOuts.push(raw as (typeof handOuts)[number]);
      return dispatch(name, raw, meta);
    };
    await s.template('web');
    const onDemand = await s.fabric.claim('web', {});
    await s.fabric.scale('web', { ready: 1 }, { wait: true });
    const paused = await s.fabric.claim('web', {});
    await s.fabric.keeper.settled();
    await s.fabric.scale('web', { ready: 0 }, { wait: true });
    await s.fabric.scale('web', { ready: 1, warm: true }, { wait: true });
    const warm = await s.fabric.claim('web', {});
    expect([onDemand.source, paused.source, warm.source]).toEqual(['on-demand', 'pool', 'pool']);
    // Each pool child's warm-up (script ":") set its clock; each claim's hand-out is the one for its VM without it.
    const claimOf = (vmId: string) => handOuts.filter((h) => h.vmId === vmId && h.script === undefined);
    expect(claimOf(onDemand.vm.id).map((h) => [h.resume, h.setClock])).toEqual([[false, true]]);
    expect(claimOf(paused.vm.id).map((h) => [h.resume, h.setClock])).toEqual([[true, true]]);
    expect(claimOf(warm.vm.id).map((h) => [h.resume, h.setClock])).toEqual([[false, false]]);
    for (const id of [paused.vm.id, warm.vm.id]) expect(handOuts.filter((h) => h.vmId === id && h.script === ':').map((h) => [h.setClock ?? true, h.arm])).toEqual([[true, true]]);
    // A pool child's warm-up arms a waiter for its claim's guest step; a claim never arms one in the child it hands out.
    expect(handOuts.filter((h) => h.script === undefined).map((h) => h.arm ?? false)).toEqual([false, false, false]);
    for (const c of [onDemand, paused, warm]) expect(c.timings.claimMs).toBeGreaterThanOrEqual(c.timings.callMs);
  });
});

async function waitUntil(check: () => Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
