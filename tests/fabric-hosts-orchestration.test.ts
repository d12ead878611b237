// Fast tests of templates on several hosts (src/vm/fabric/place.ts and the
// service) against two fake agents that pass the agent contract: the
// controller's own host `a` in process and `b` over HTTP. A template made on
// a is carried to b (its frozen base copied into b's bases, the
// default guest's files used where they are, its memory through a checkpoint
// file that goes from both hosts once imported), both by copy jobs of
// purpose `place` run by b; pools per host and claims across hosts; a copy or
// an import that fails, or a cancel of the task, leaves nothing at b (no
// exported file at a, its jobs ended); a controller that died while the files
// travelled has its placement finished by its next life with the same jobs,
// one that died while importing has it removed; `template create --host` is
// all or nothing; delete removes the copies on every host. The same paths run against real QEMU on
// lab hosts in tests/e2e/fabric-hosts.test.ts.
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../src/common/index.ts';
import type { FakeAgent } from '../src/protocol/index.ts';
import type { CarryReport, TemplateView } from '../src/vm/index.ts';
import { FabricService, StorageService, VmEngine } from '../src/vm/index.ts';
import { codeOf } from '../src/protocol/contract-support.ts';
import { closedAfterEach, twoHostFleet } from './fake-fleet.ts';

type Faults = (point: string) => Promise<void> | void;

async function setup(faults?: Faults) {
  const s = await twoHostFleet({ prefix: 'osh-fabric-hosts', subnet: '10.254.9' });
  const { inventory, engine } = s;
  const storage = s.own(new StorageService({ inventory, storageInventory: inventory.storage, engine, logger: silentLogger, faults }));
  const fabric = s.own(new FabricService({ inventory, fabric: inventory.fabric, engine, logger: silentLogger, readyTimeoutMs: 5_000, reconcileMs: 60_000, jobs: storage.jobs, faults }));
  await fabric.start();
  await s.running('src', 'a');
  const template = async (name: string, hosts?: string[]): Promise<TemplateView> => {
    const made = await fabric.create({ name, from: 'src', ...(hosts ? { hosts } : {}) });
    const done = await engine.tasks.wait(made.task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    return fabric.show(name);
  };
  const place = async (name: string, host: string) => {
    const started = await fabric.place(name, { host });
    return engine.tasks.wait(started.task?.id as string);
  };
  /** Files of the template's folder on a fake host. */
  const folder = (agent: FakeAgent, templateId: string) => [...agent.files].filter((f) => f.startsWith(`home:fabric/${templateId}/`)).sort();
  /** The copy jobs of placements (purpose place). */
  const placeJobs = async () => (await storage.jobs.list()).filter((j) => j.purpose.kind === 'place');
  /** The controller's next life (same id) after it died: its engine recovers, then its fabric and copy jobs start. */
  const nextLife = async () => {
    const next = new VmEngine({ inventory, fleet: s.fleet, logger: silentLogger, coordination: { controllerId: engine.controllerId } });
    const nextStorage = new StorageService({ inventory, storageInventory: inventory.storage, engine: next, logger: silentLogger });
    const nextFabric = new FabricService({ inventory, fabric: inventory.fabric, engine: next, logger: silentLogger, reconcileMs: 60_000, jobs: nextStorage.jobs });
    await next.recover();
    await nextFabric.start();
    await nextStorage.resumeJobs();
    const close = async () => {
      await nextFabric.close();
      await nextStorage.close();
      await next.close();
    };
    return { engine: next, storage: nextStorage, fabric: nextFabric, close };
  };
  return { ...s, a: s.local, b: s.remote, fabric, storage, template, place, folder, placeJobs, nextLife };
}

/** A fault point where the controller hangs for good (as dead) until `die` (then it fails there, as its process would never have). */
function deathAt(points: string[]): { faults: Faults; die: () => void } {
  let die!: (err: Error) => void;
  const dead = new Promise<void>((_, reject) => (die = reject));
  dead.catch(() => undefined);
  return { faults: (p) => (points.includes(p) ? dead : undefined), die: () => die(new Error('the old controller goes')) };
}

async function waitUntil(check: () => Promise<boolean>, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('templates on several hosts against fake agents', () => {
  const closers = closedAfterEach();
  /** The controller's next life after `death`; after the test the old one goes (fails at its fault point), then both close. */
  const nextLifeAfter = async (s: Awaited<ReturnType<typeof setup>>, death: ReturnType<typeof deathAt>) => {
    const next = await s.nextLife();
    closers.push(async () => {
      death.die();
      await new Promise((r) => setTimeout(r, 100));
      await next.close();
      await s.close();
    });
    return next;
  };

  it('carries a template to another host: its base copied, the guest files used where they are, its memory imported; pools per host, claims on both', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    const origin = t.placements[0] as TemplateView['placements'][number];
    const done = await s.place('web', 'b');
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const report = (done.result as { carried: CarryReport }).carried;
    const placed = await s.fabric.show('web');
    expect(placed.placements.map((p) => [p.host, p.state])).toEqual([
      ['a', 'ready'],
      ['b', 'ready'],
    ]);
    const atB = placed.placements[1] as TemplateView['placements'][number];
    // The frozen base travelled into b's template folder; the default guest's kernel, initrd and data disk did not.
    const frozen = origin.spec?.disks[0]?.file as string;
    expect(report.copied.map((c) => c.from)).toEqual([frozen]);
    expect(atB.spec?.disks[0]?.file).toBe(report.copied[0]?.to);
    expect(atB.spec?.disks[0]?.file).toMatch(new RegExp(`^home:bases/${t.id.slice(0, 8)}-0-`));
    expect(atB.spec?.disks[0]?.backing).toEqual(origin.spec?.disks[0]?.backing);
    expect(report.held.map((h) => h.file).sort()).toEqual([...(origin.spec?.disks[0]?.backing ?? []), (origin.spec?.boot as { kernel: string }).kernel, (origin.spec?.boot as { initrd: string }).initrd].sort());
    // The base and the memory file travelled as two copy jobs of purpose place, run by b, read from a's file server.
    const jobs = await s.placeJobs();
    expect(jobs.map((j) => j.id)).toEqual(report.copyJobs);
    expect(jobs.map((j) => [j.purpose, j.hostId, j.state, j.files.map((f) => [f.source, f.target, f.sourceHostId])])).toEqual([
      [{ kind: 'place', templateId: t.id, template: 'web', taskId: done.id, memory: null }, s.hostB.id, 'succeeded', [[frozen, report.copied[0]?.to, origin.hostId]]],
      [{ kind: 'place', templateId: t.id, template: 'web', taskId: done.id, memory: expect.objectContaining({ hostId: origin.hostId }) }, s.hostB.id, 'succeeded', [[expect.stringMatching(/\.ckpt$/), `home:fabric/${t.id}/memory.ckpt`, origin.hostId]]],
    ]);
    expect(report.memoryFileBytes).toBeGreaterThan(0);
    for (const j of jobs) expect(await s.inventory.pins.list({ holder: `copy-job:${j.id}` })).toEqual([]);
    // A placement's job cannot be moved to another host (its copies land in b's own folder).
    expect((await s.storage.handover.refusal({ ...(jobs[0] as (typeof jobs)[number]), state: 'paused' }, s.hostB))?.reason).toContain('carries template web');
    // The copy is linked over b's own data disk; the checkpoint files that carried the memory are gone on both hosts.
    expect(s.b.backing.get(atB.spec?.disks[0]?.file as never)).toBe(atB.spec?.disks[0]?.backing[0]);
    expect(s.b.files.has(atB.spec?.disks[0]?.file as never)).toBe(true);
    expect(s.folder(s.b, t.id)).toEqual([]);
    expect(s.folder(s.a, t.id).filter((f) => f.endsWith('.ckpt'))).toEqual([]);
    expect(s.b.hostTemplates.get(t.id)?.memoryTemplateId).toBe(atB.memoryTemplateId);
    expect(atB.memoryTemplateId).not.toBe(origin.memoryTemplateId);
    // Pinned on both hosts.
    const pinned = (await s.inventory.pins.list({ holder: `fabric:${t.id}` })).map((x) => x.path);
    expect(pinned).toEqual(expect.arrayContaining([`template:${atB.memoryTemplateId}`, `template:${origin.memoryTemplateId}`, ...atB.files]));
    // Placed twice is refused; a host it is not on cannot be scaled.
    expect(await codeOf(s.fabric.place('web', { host: 'b' }))).toBe('TEMPLATE_PLACEMENT_REFUSED');
    expect(await codeOf(s.fabric.place('web', { host: 'nope' }))).toBe('NOT_FOUND');

    // A pool per host; claims take from both, never the same child; --host takes one there.
    await s.fabric.scale('web', { ready: 2 }, { wait: true });
    const pools = (await s.fabric.show('web')).placements.map((p) => [p.host, p.children.ready]);
    expect(pools).toEqual([
      ['a', 2],
      ['b', 2],
    ]);
    const onB = await s.fabric.claim('web', { host: 'b', hostname: 'on-b' });
    expect(onB.host).toBe('b');
    expect(onB.vm.hostId).toBe(s.hostB.id);
    expect(s.b.vms.get(onB.vm.id)?.runtime.memory.templateId).toBe(atB.memoryTemplateId);
    const many = await Promise.all(Array.from({ length: 5 }, () => s.fabric.claim('web', {})));
    expect(new Set([onB.vm.id, ...many.map((c) => c.vm.id)]).size).toBe(6);
    expect(many.filter((c) => c.source === 'pool')).toHaveLength(3);
    expect(new Set(many.filter((c) => c.source === 'pool').map((c) => c.host))).toEqual(new Set(['a', 'b']));
    await s.fabric.keeper.settled();
    expect((await s.fabric.show('web')).placements.map((p) => [p.host, p.children.ready])).toEqual([
      ['a', 2],
      ['b', 2],
    ]);
  });

  it('leaves nothing at the destination (nor an exported file at the source) when a copy or the import fails; a later placement works', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    const filesA = [...s.a.files].sort();
    const filesB = [...s.b.files].sort();
    for (const [call, phase] of [
      ['fetchFile', 'copying the template files'],
      ['importTemplate', 'loading the template memory on the host'],
      ['exportTemplate', 'carrying the template memory'],
    ] as const) {
      (call === 'exportTemplate' ? s.a : s.b).failNext(call);
      const failed = await s.place('web', 'b');
      expect(failed.state).toBe('failed');
      expect(failed.error?.code).toBe('TEMPLATE_PLACEMENT_FAILED');
      expect(failed.error?.details.phase).toBe(phase);
      expect((await s.fabric.show('web')).placements.map((p) => p.host)).toEqual(['a']);
      expect(s.b.hostTemplates.has(t.id)).toBe(false);
      expect(s.folder(s.b, t.id)).toEqual([]);
      expect([...s.b.files].sort()).toEqual(filesB);
      expect([...s.a.files].sort()).toEqual(filesA);
      // Its jobs ended (cancelled, or succeeded: their copies are gone all the same), none pins anything; nor does the task.
      const jobs = (await s.placeJobs()).filter((j) => j.purpose.kind === 'place' && j.purpose.taskId === failed.id);
      expect(jobs.length).toBeGreaterThan(0);
      for (const j of jobs) expect(['cancelled', 'succeeded']).toContain(j.state);
      for (const j of jobs) expect(await s.inventory.pins.list({ holder: `copy-job:${j.id}` })).toEqual([]);
      expect(await s.inventory.pins.list({ holder: `task:${failed.id}` })).toEqual([]);
    }
    expect((await s.place('web', 'b')).state).toBe('succeeded');
    expect((await s.fabric.show('web')).placements.map((p) => [p.host, p.state])).toEqual([
      ['a', 'ready'],
      ['b', 'ready'],
    ]);
  });

  it('a cancel of the placement task cancels its copy jobs and leaves nothing; a later placement works', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web');
    const filesA = [...s.a.files].sort();
    const filesB = [...s.b.files].sort();
    const release = s.b.hold('fetchFile');
    const started = await s.fabric.place('web', { host: 'b' });
    await waitUntil(async () => (await s.placeJobs()).some((j) => j.state === 'running'));
    expect((await s.engine.tasks.get(started.task?.id as string)).state).toBe('running');
    // The task's progress follows its jobs (and names them).
    await waitUntil(async () => /^copying .* to host b \(copy job job-/.test((await s.engine.tasks.get(started.task?.id as string)).message));
    const cancelling = s.engine.cancelTask(started.task?.id as string);
    release();
    const cancelled = await cancelling;
    expect([cancelled.state, cancelled.error?.code]).toEqual(['failed', 'TASK_CANCELLED']);
    // The files' job, held on b, is cancelled; the memory's may have finished first (its copy is gone all the same).
    const states = (await s.placeJobs()).map((j) => j.state);
    expect(states[0]).toBe('cancelled');
    expect(['cancelled', 'succeeded']).toContain(states[1]);
    expect((await s.fabric.show('web')).placements.map((p) => p.host)).toEqual(['a']);
    expect(s.b.hostTemplates.has(t.id)).toBe(false);
    expect([...s.b.files].sort()).toEqual(filesB);
    expect([...s.a.files].sort()).toEqual(filesA);
    expect((await s.place('web', 'b')).state).toBe('succeeded');
  });

  it('a controller that died while the files travelled: its next life takes the placement over and finishes it with the same jobs', async () => {
    const death = deathAt(['template.copying', 'copy.file']);
    const s = await setup(death.faults);
    const t = await s.template('web');
    const started = await s.fabric.place('web', { host: 'b' });
    // The old controller hangs (as dead) with both jobs submitted and recorded, before their workers copy.
    await waitUntil(async () => (await s.placeJobs()).length === 2 && (await s.engine.tasks.get(started.task?.id as string)).result !== null);
    const next = await nextLifeAfter(s, death);
    const done = await next.engine.tasks.wait(started.task?.id as string);
    expect(done.state, JSON.stringify(done.error)).toBe('succeeded');
    const report = (done.result as { carried: CarryReport }).carried;
    const jobs = await s.placeJobs();
    expect(jobs.map((j) => j.id)).toEqual(report.copyJobs);
    expect(jobs.map((j) => [j.state, j.hostId, j.purpose.kind === 'place' && j.purpose.taskId])).toEqual([
      ['succeeded', s.hostB.id, started.task?.id],
      ['succeeded', s.hostB.id, started.task?.id],
    ]);
    const atB = (await next.fabric.show('web')).placements.find((p) => p.host === 'b');
    expect([atB?.state, atB?.memoryTemplateId]).toEqual(['ready', s.b.hostTemplates.get(t.id)?.memoryTemplateId]);
    expect(s.b.files.has(atB?.spec?.disks[0]?.file as never)).toBe(true);
    expect(s.folder(s.b, t.id)).toEqual([]);
    expect(s.folder(s.a, t.id).filter((f) => f.endsWith('.ckpt'))).toEqual([]);
  });

  it('a controller that died after the copies (importing): its next life removes the placement, its copies and its exported file', async () => {
    const death = deathAt(['template.importing']);
    const s = await setup(death.faults);
    const t = await s.template('web');
    const filesA = [...s.a.files].sort();
    const filesB = [...s.b.files].sort();
    const started = await s.fabric.place('web', { host: 'b' });
    await waitUntil(async () => ((await s.engine.tasks.get(started.task?.id as string)).result as { journal?: { phase?: string } } | null)?.journal?.phase === 'importing');
    const next = await nextLifeAfter(s, death);
    const task = await next.engine.tasks.get(started.task?.id as string);
    expect([task.state, task.error?.code]).toEqual(['failed', 'TASK_INTERRUPTED']);
    expect((await next.fabric.show('web')).placements.map((p) => p.host)).toEqual(['a']);
    expect(s.b.hostTemplates.has(t.id)).toBe(false);
    expect([...s.b.files].sort()).toEqual(filesB);
    expect([...s.a.files].sort()).toEqual(filesA);
    expect((await s.placeJobs()).map((j) => j.state)).toEqual(['succeeded', 'succeeded']);
  });

  it('template create --host places it on every host, or fails leaving nothing of it; the source VM runs on', async () => {
    const s = await setup();
    closers.push(s.close);
    s.b.failNext('importTemplate');
    const made = await s.fabric.create({ name: 'web', from: 'src', hosts: ['b'] });
    const failed = await s.engine.tasks.wait(made.task?.id as string);
    expect(failed.error?.code).toBe('TEMPLATE_PLACEMENT_FAILED');
    expect(await s.fabric.list()).toEqual([]);
    expect(s.a.hostTemplates.size + s.b.hostTemplates.size).toBe(0);
    expect(s.folder(s.b, made.template.id)).toEqual([]);
    expect((await s.engine.resolve('src')).state).toBe('running');
    const t = await s.template('web', ['b', 'a']);
    expect(t.placements.map((p) => [p.host, p.state])).toEqual([
      ['a', 'ready'],
      ['b', 'ready'],
    ]);
  });

  it('template delete removes the copies on every host: refused with children, --force leaves claimed children running', async () => {
    const s = await setup();
    closers.push(s.close);
    const t = await s.template('web', ['b']);
    await s.fabric.scale('web', { ready: 1 }, { wait: true });
    const claimed = await s.fabric.claim('web', { host: 'b' });
    await s.fabric.keeper.settled();
    expect(await codeOf(s.fabric.delete('web'))).toBe('TEMPLATE_IN_USE');
    await s.fabric.delete('web', { force: true });
    expect(await s.fabric.list()).toEqual([]);
    for (const agent of [s.a, s.b]) {
      expect(agent.hostTemplates.has(t.id)).toBe(false);
      expect(s.folder(agent, t.id)).toEqual([]);
    }
    expect((await s.engine.list()).map((v) => `${v.name} ${v.state}`).sort()).toEqual([`${claimed.vm.name} running`, 'src running'].sort());
    // The claimed child on b still maps b's copy of the memory and runs over b's copy of the base; once it goes, they go.
    expect(s.b.templates.has(claimed.vm.runtime?.memory.templateId as string)).toBe(true);
    const base = t.placements.find((p) => p.host === 'b')?.spec?.disks[0]?.file as never;
    await s.engine.collectGarbage();
    expect(s.b.files.has(base)).toBe(true);
    await s.engine.kill(claimed.vm.id);
    await s.engine.delete(claimed.vm.id);
    await s.engine.collectGarbage();
    expect(s.b.files.has(base)).toBe(false);
    expect(s.b.templates.has(claimed.vm.runtime?.memory.templateId as string)).toBe(false);
  });
});
