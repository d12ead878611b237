// The fabric service: one handler for templates, their pools and claims
// (REST routes and the CLI go through it). A template is made of a running VM
// by a task (create-template.ts) and carried to other hosts by a task each
// (place.ts; `create --host` carries it in its own task, all or nothing); its
// pools, one per host it is ready on, are kept by the pool keeper (pool.ts);
// a claim hands a child out from any host (claim.ts).
//
// Placements: `placing` while their task runs (a task taken over from a
// controller that died while the files travelled goes on here; a placement
// whose task ended unfinished is removed from its host, with its copy jobs,
// at start and by the periodic check), `ready`, or `broken` (placing it again
// replaces it). `task cancel` of a placement cancels its copy jobs.
// `template delete` removes the copy on every host; a host that does not
// answer keeps the template `deleting` (with that host's copy listed) until
// it does, so no host is left with files of a template the inventory forgot.
//
// Lifecycle rules (issue 14): `template delete` refuses while the template
// has children (ready or being made in its pools, or claimed children still
// running); with --force its pools go and its claimed children run on, each
// keeping the template's memory mapped until it ends (the host releases a
// memory template only once no VM maps it). A template whose copy on a host
// lost its memory, device state or files is `broken` there (with the reason),
// its ready children there are retired, and no claim is served from it.
//
// At daemon start (start()) and then periodically, every template's copies
// are checked and its pools reconciled and refilled; a host that comes back
// has its pools reconciled too. A template left `creating` by a task that
// ended unfinished (its controller died; the engine's recovery rolled the
// freeze back from its fork journal) is dropped. A template's host copies
// (memory templates and files) are pinned in the inventory (`fabric:ID`)
// while it exists; its pools' work holds their claims (pool.ts).
import { OffshootError, toOffshootError } from '../../common/index.ts';
import { TEMPLATE_PIN } from '../gc.ts';
import { newTaskId } from '../ids.ts';
import { parseRequest } from '../requests.ts';
import type { TaskRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import { claimChild } from './claim.ts';
import type { ClaimResult } from './claim.ts';
import { EMPTY_POOL, freezeTemplate } from './create-template.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { PlacementRefusedError, TemplateInUseError, TemplateNotPlacedError } from './errors.ts';
import { carryTemplate, placementCancelled, resumeCarry, undoCarry, undoPlacement } from './place.ts';
import type { CarryReport, PlaceJournal } from './place.ts';
import { PoolKeeper } from './pool.ts';
import type { MemberState, PoolSettings, TemplatePlacement, TemplateRecord } from './records.ts';
import { assertTemplateState } from './records.ts';
import { claimRequestSchema, createTemplateRequestSchema, deleteTemplateRequestSchema, placeTemplateRequestSchema, scaleTemplateRequestSchema } from './requests.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const DEFAULT_RECONCILE_MS = 30_000;
/** A `creating` template with no task recorded is dropped after this long. */
const UNRECORDED_CREATION_MS = 10 * 60_000;
const PLACE_TASK = 'template.place';

export interface PlacementView extends TemplatePlacement {
  host: string;
  /** The pool's children by their ready state (claimed: still running, handed out from here). */
  children: Record<MemberState, number>;
}

export interface TemplateView extends Omit<TemplateRecord, 'placements'> {
  placements: PlacementView[];
}

export interface TemplateAndTask {
  template: TemplateView;
  task?: TaskRecord;
}

export class FabricService {
  readonly keeper: PoolKeeper;
  private timer: NodeJS.Timeout | undefined;
  private readonly unsubscribe: () => void;
  /** Placement tasks running here, by task id: aborted by a cancel of the task. */
  private readonly carrying = new Map<string, { cancel: AbortController; templateId: string; hostId: string }>();

  constructor(private readonly deps: FabricDeps) {
    this.keeper = new PoolKeeper(deps);
    // A claimed child's row goes with its VM.
    this.unsubscribe = deps.engine.events.subscribe((event) => {
      if (event.type === 'vm.deleted') void deps.fabric.getMember(event.vmId).then((m) => (m && m.state === 'claimed' ? deps.fabric.deleteMember(m.vmId) : undefined)).catch(() => undefined);
    });
    // Placements: taken over from a controller that died (resumed while their files travel), cancelled by request.
    deps.engine.registerRecovery(PLACE_TASK, (task, journal) => this.recoverPlacement(task, journal as PlaceJournal | undefined));
    deps.engine.registerCanceller(PLACE_TASK, (task) => this.cancelPlacement(task));
    deps.engine.watchCancels({ cancellable: () => this.carrying.size > 0, cancelRequested: (ids) => ids.forEach((id) => this.cancelHere(id)) });
    deps.engine.fleet.listen({ hostBack: (host, why) => void this.checkHost(host.id, why === 'agent-restarted').catch((err: unknown) => deps.logger.warn({ err, host: host.name }, 'cannot reconcile the pools of a host')) });
  }

  /** After the engine's recovery: finishes what a previous daemon left (creations, deletions), then checks and refills every pool; then periodically. */
  async start(): Promise<void> {
    for (const t of await this.deps.fabric.listTemplates()) {
      try {
        if (t.state === 'creating') await this.dropIfUnfinished(t);
        else if (t.state === 'deleting') await this.finishDelete(t);
        else {
          await this.pin(t.id, t.placements);
          await this.dropStalePlacements(t);
          await this.check(t, { recovering: true });
        }
      } catch (err) {
        this.deps.logger.warn({ err: toOffshootError(err).message, template: t.name }, 'cannot recover a template');
      }
    }
    const every = this.deps.reconcileMs ?? DEFAULT_RECONCILE_MS;
    this.timer = setInterval(() => void this.checkAll().catch((err: unknown) => this.deps.logger.warn({ err }, 'template check failed')), every);
    this.timer.unref();
  }

  /** Stops the periodic check and waits for refills in flight (children stay; the next daemon adopts them). */
  async close(): Promise<void> {
    clearInterval(this.timer);
    this.unsubscribe();
    this.keeper.close();
    await this.keeper.settled();
  }

  async resolve(ref: string): Promise<TemplateRecord> {
    const t = UUID.test(ref) ? await this.deps.fabric.getTemplate(ref) : await this.deps.fabric.findTemplate(ref);
    if (!t) throw new OffshootError('NOT_FOUND', `template "${ref}" not found`, { kind: 'template', ref }, 404);
    return t;
  }

  async list(): Promise<TemplateView[]> {
    return Promise.all((await this.deps.fabric.listTemplates()).map((t) => this.view(t)));
  }

  async show(ref: string): Promise<TemplateView> {
    return this.view(await this.resolve(ref));
  }

  /** `template create NAME --from VM`: a task freezes the VM into the template; the VM runs on. */
  async create(input: unknown): Promise<TemplateAndTask> {
    const request = parseRequest('template create request', createTemplateRequestSchema, input);
    if (await this.deps.fabric.findTemplate(request.name)) throw new OffshootError('ALREADY_EXISTS', `template "${request.name}" already exists`, { kind: 'template', name: request.name }, 409);
    const { id: sourceId, hostId: sourceHost } = await this.deps.engine.resolve(request.from);
    // Other hosts to carry it to (the source's own host is its first placement anyway).
    const targets: string[] = [];
    for (const ref of request.hosts ?? []) {
      const host = await this.deps.engine.fleet.resolve(ref);
      if (host.id !== sourceHost && !targets.includes(host.id)) targets.push(host.id);
    }
    const { vm: source, previous } = await this.deps.engine.states.claimFrom(sourceId, 'fork', 'forking', 'with a template freeze');
    const now = new Date().toISOString();
    const template: TemplateRecord = { id: newTaskId(), name: request.name, state: 'creating', stateReason: `being made from VM ${source.name}`, sourceVmId: source.id, sourceVmName: source.name, originHostId: source.hostId, memoryMiB: source.spec.memoryMiB, placements: [], createdAt: now, updatedAt: now };
    let released = false;
    const release = async () => {
      if (released) return;
      released = true;
      this.deps.engine.states.release(sourceId);
      await this.deps.engine.states.settle(sourceId, ['forking'], previous, null).catch(() => undefined);
    };
    try {
      await this.deps.fabric.insertTemplate(template);
    } catch (err) {
      await release();
      throw err;
    }
    const forkId = newTaskId();
    try {
      const task = await this.deps.engine.tasks.start('template.create', { id: template.id, name: template.name }, async (ctx) => {
        const placed: string[] = [];
        try {
          const placement = await freezeTemplate(this.deps, template, { ...source, state: previous }, previous === 'paused' ? 'paused' : 'running', ctx, forkId);
          placed.push(placement.hostId);
          await this.pin(template.id, [placement]);
          // The source VM is free again; the copies on other hosts are made from the template, not from it.
          await release();
          let current = await this.deps.fabric.updateTemplate(template.id, (t) => ({ ...t, placements: [placement, ...targets.map((h) => this.placing(h, placement.hostId, ctx.taskId))] }));
          const carried: CarryReport[] = [];
          for (const hostId of targets) {
            placed.push(hostId);
            const done = await carryTemplate(this.deps, current, placement, hostId, ctx);
            await this.pin(template.id, [done.placement]);
            carried.push(done.report);
            current = await this.deps.fabric.updateTemplate(template.id, (t) => ({ ...t, placements: t.placements.map((p) => (p.hostId === hostId ? done.placement : p)) }));
          }
          const ready = await this.deps.fabric.updateTemplate(template.id, (t) => ({ ...t, state: 'ready', stateReason: null }));
          return { template: await this.view(ready), ...(carried.length ? { carried } : {}) };
        } catch (err) {
          // All or nothing: the copies already made (on the source's host too) go with the template.
          for (const hostId of placed) await undoCarry(this.deps, template.id, hostId);
          await this.unpin(template.id).catch(() => undefined);
          await this.deps.fabric.deleteTemplate(template.id).catch(() => undefined);
          throw err;
        } finally {
          await release();
        }
      });
      const current = await this.deps.fabric.updateTemplate(template.id, (t) => (t.state === 'creating' ? { ...t, taskId: task.id } : t)).catch(() => undefined);
      return { template: await this.view(current ?? { ...template, state: 'creating', taskId: task.id }), task };
    } catch (err) {
      await this.deps.fabric.deleteTemplate(template.id).catch(() => undefined);
      await release();
      throw err;
    }
  }

  /**
   * `template place NAME --host H`: a task carries the template to the host (place.ts); its placement is `placing`
   * meanwhile, `ready` after, and gone (nothing left there) if that fails. A broken placement there is replaced.
   */
  async place(ref: string, input: unknown): Promise<TemplateAndTask> {
    const request = parseRequest('template place request', placeTemplateRequestSchema, input);
    const t = await this.resolve(ref);
    assertTemplateState(t, ['ready'], 'place');
    const host = await this.deps.engine.fleet.resolve(request.host);
    const from = t.placements.find((p) => p.hostId === t.originHostId && p.state === 'ready') ?? t.placements.find((p) => p.state === 'ready');
    if (!from) throw new PlacementRefusedError(t.name, host.name, 'it has no ready copy on any host to carry');
    if (host.state !== 'ready') throw new PlacementRefusedError(t.name, host.name, `the host is ${host.state}`);
    let replaced: TemplatePlacement | undefined;
    const marked = await this.deps.fabric.updateTemplate(t.id, (x) => {
      const there = x.placements.find((p) => p.hostId === host.id);
      if (there && there.state !== 'broken') throw new PlacementRefusedError(x.name, host.name, there.state === 'placing' ? 'it is being placed there' : 'it is placed there already');
      replaced = there;
      return { ...x, placements: [...x.placements.filter((p) => p.hostId !== host.id), { ...this.placing(host.id, from.hostId, null), pool: there?.pool ?? { ...EMPTY_POOL } }] };
    });
    const task = await this.deps.engine.tasks.start(PLACE_TASK, { id: t.id, name: `${t.name}@${host.name}` }, (ctx) =>
      this.placeWork(t.id, host.id, ctx, async (cancel) => {
        if (replaced) {
          // The broken copy's children and files go first.
          for (const m of await this.deps.fabric.listMembers({ templateId: t.id, hostId: host.id })) if (m.state !== 'claimed') await this.keeper.retire(m, ['ready', 'filling', 'retiring']);
          await undoCarry(this.deps, t.id, host.id);
        }
        const current = await this.resolve(t.id);
        return carryTemplate(this.deps, current, from, host.id, ctx, { journal: (j) => ctx.journal(j), cancel });
      }),
    );
    const current = await this.deps.fabric.updateTemplate(t.id, (x) => ({ ...x, placements: x.placements.map((p) => (p.hostId === host.id && p.state === 'placing' ? { ...p, taskId: task.id } : p)) })).catch(() => marked);
    return { template: await this.view(current), task };
  }

  /** A placement task's work (started, or resumed after a takeover): the carry, then the placement ready and its pool asked for. */
  private async placeWork(templateId: string, hostId: string, ctx: TaskContext, carry: (cancel: AbortSignal) => ReturnType<typeof carryTemplate>): Promise<unknown> {
    const cancel = new AbortController();
    this.carrying.set(ctx.taskId, { cancel, templateId, hostId });
    try {
      const { placement, report } = await carry(cancel.signal);
      await this.pin(templateId, [placement]);
      const ready = await this.deps.fabric.updateTemplate(templateId, (x) => ({ ...x, placements: x.placements.map((p) => (p.hostId === hostId ? { ...placement, pool: p.pool } : p)) }));
      this.keeper.request(templateId, hostId);
      return { template: await this.view(ready), carried: report };
    } catch (err) {
      if (!ctx.signal.aborted) await this.dropPlacing(templateId, hostId);
      throw err;
    } finally {
      this.carrying.delete(ctx.taskId);
    }
  }

  /**
   * A placement task whose controller died: one whose files were travelling goes on here from its journal (its
   * jobs are taken over with their own tasks); any other fails, and what it made goes (dropStalePlacements).
   */
  private async recoverPlacement(task: TaskRecord, journal: PlaceJournal | undefined): Promise<string> {
    if (!journal || journal.phase !== 'copying') return 'the placement is removed from its host';
    const t = await this.deps.fabric.getTemplate(journal.templateId);
    if (!t?.placements.some((p) => p.hostId === journal.hostId && p.state === 'placing')) return 'the placement is gone';
    this.deps.logger.info({ template: journal.template, host: journal.hostId, jobs: [journal.filesJobId, journal.memoryJobId] }, 'going on with a placement whose controller died');
    this.deps.engine.tasks.resume(task, (ctx) => this.placeWork(journal.templateId, journal.hostId, ctx, (cancel) => resumeCarry(this.deps, journal, ctx, { journal: (j) => ctx.journal(j), cancel })));
    return 'resumed';
  }

  /** `task cancel` of a placement: its jobs are cancelled and nothing of it is left (on whichever controller runs it). */
  private async cancelPlacement(task: TaskRecord): Promise<TaskRecord> {
    if (!this.cancelHere(task.id)) await this.deps.engine.coordinator.store.leases.requestCancel(task.id);
    return this.deps.engine.tasks.wait(task.id);
  }

  private cancelHere(taskId: string): boolean {
    const running = this.carrying.get(taskId);
    if (!running) return false;
    void this.deps.fabric
      .getTemplate(running.templateId)
      .catch(() => undefined)
      .then((t) => running.cancel.abort(placementCancelled(taskId, t?.name ?? running.templateId, this.deps.engine.hostName(running.hostId))));
    return true;
  }

  /** A placement being carried to `hostId` from `fromHost` by task `taskId`. */
  private placing(hostId: string, fromHost: string, taskId: string | null): TemplatePlacement {
    return { hostId, state: 'placing', stateReason: `being carried from host ${this.deps.engine.hostName(fromHost)}`, spec: null, memoryTemplateId: null, files: [], pool: { ...EMPTY_POOL }, poolNote: null, placedAt: null, taskId };
  }

  private async dropPlacing(templateId: string, hostId: string): Promise<void> {
    await this.deps.fabric.updateTemplate(templateId, (x) => ({ ...x, placements: x.placements.filter((p) => !(p.hostId === hostId && p.state === 'placing')) })).catch(() => undefined);
  }

  /** Placements left `placing` by a task that ended (its controller died): what they made on their host goes. */
  private async dropStalePlacements(t: TemplateRecord): Promise<void> {
    for (const p of t.placements.filter((x) => x.state === 'placing')) {
      const task = p.taskId ? await this.deps.engine.tasks.get(p.taskId).catch(() => undefined) : undefined;
      if (task?.state === 'running' || (!p.taskId && Date.now() - Date.parse(t.updatedAt) < UNRECORDED_CREATION_MS)) continue;
      this.deps.logger.warn({ template: t.name, host: p.hostId }, 'a placement whose task ended unfinished: removing what it made');
      const journal = (task?.result as { journal?: PlaceJournal } | null)?.journal;
      if (journal && p.taskId) await undoPlacement(this.deps, journal, p.taskId);
      else await undoCarry(this.deps, t.id, p.hostId, p.taskId ?? null);
      await this.dropPlacing(t.id, p.hostId);
    }
  }

  /** `template scale NAME --ready K [--warm] [--max-memory M] [--host H]`: new pool settings; the keeper brings the pools to them. */
  async scale(ref: string, input: unknown, options: { wait?: boolean } = {}): Promise<TemplateView> {
    const request = parseRequest('template scale request', scaleTemplateRequestSchema, input);
    const found = await this.resolve(ref);
    assertTemplateState(found, request.ready === 0 ? ['ready', 'broken'] : ['ready'], 'scale');
    const hostId = request.host ? (await this.deps.engine.fleet.resolve(request.host)).id : undefined;
    if (hostId && !found.placements.some((p) => p.hostId === hostId)) throw new TemplateNotPlacedError(found.name, this.deps.engine.hostName(hostId), 'it is not placed there');
    const settings = (p: TemplatePlacement): PoolSettings => ({ ready: request.ready, warm: request.warm ?? p.pool.warm, maxMemoryBytes: request.maxMemory === undefined ? p.pool.maxMemoryBytes : request.maxMemory });
    const updated = await this.deps.fabric.updateTemplate(found.id, (t) => ({ ...t, placements: t.placements.map((p) => (hostId === undefined || p.hostId === hostId ? { ...p, pool: settings(p), poolNote: null } : p)) }));
    for (const p of updated.placements) if (hostId === undefined || p.hostId === hostId) this.keeper.request(updated.id, p.hostId);
    if (options.wait) await this.keeper.settled();
    return this.view(await this.resolve(updated.id));
  }

  /** `vm claim TEMPLATE`: a ready child (or one forked on demand), customised and running. */
  async claim(ref: string, input: unknown): Promise<ClaimResult> {
    const request = parseRequest('claim request', claimRequestSchema, input);
    return claimChild(this.deps, this.keeper, await this.resolve(ref), request);
  }

  /**
   * `template delete NAME [--force]`: refused while the template has children; with force, its pool children
   * are removed and its claimed children run on. Its host copies go (their memory stays while a child maps it).
   */
  async delete(ref: string, input: unknown = {}): Promise<TemplateView> {
    const { force } = parseRequest('template delete request', deleteTemplateRequestSchema, input);
    const t = await this.resolve(ref);
    const users = await this.users(t);
    if (!force && (users.pooled > 0 || users.claimed.length > 0)) throw new TemplateInUseError(t.name, { ready: users.pooled, claimed: users.claimed });
    if (t.state === 'creating') throw new OffshootError('ILLEGAL_STATE', `template "${t.name}" is still being made; delete it once its task has ended`, { template: t.name, state: t.state }, 409);
    const placing = t.placements.filter((p) => p.state === 'placing').map((p) => this.deps.engine.hostName(p.hostId));
    if (placing.length > 0) throw new OffshootError('ILLEGAL_STATE', `template "${t.name}" is being placed on ${placing.join(', ')}; delete it once that task has ended`, { template: t.name, placing }, 409);
    const deleting = await this.deps.fabric.updateTemplate(t.id, (x) => ({ ...x, state: 'deleting', stateReason: 'being deleted', placements: x.placements.map((p) => ({ ...p, pool: { ...p.pool, ready: 0 } })) }));
    const view = await this.view(deleting);
    await this.finishDelete(deleting);
    return { ...view, state: 'deleting' };
  }

  /** Its pool children (ready or being made) and the names of its claimed children still running. */
  private async users(t: TemplateRecord): Promise<{ pooled: number; claimed: string[] }> {
    const members = await this.deps.fabric.listMembers({ templateId: t.id });
    const claimed: string[] = [];
    for (const m of members.filter((x) => x.state === 'claimed')) {
      const vm = await this.deps.inventory.getVm(m.vmId);
      if (vm) claimed.push(vm.name);
      else await this.deps.fabric.deleteMember(m.vmId);
    }
    return { pooled: members.filter((m) => m.state !== 'claimed').length, claimed };
  }

  private async finishDelete(t: TemplateRecord): Promise<void> {
    // No refill starts for a deleting template (plan() wants it ready); wait for those in flight.
    await this.keeper.settled();
    for (const m of await this.deps.fabric.listMembers({ templateId: t.id })) {
      if (m.state === 'claimed') await this.deps.fabric.deleteMember(m.vmId);
      else await this.keeper.retire(m, ['ready', 'filling', 'retiring']);
    }
    const left: TemplatePlacement[] = [];
    for (const p of t.placements) {
      await agentOn(this.deps, p.hostId)
        .removeTemplate({ templateId: t.id })
        .catch((err: unknown) => {
          left.push(p);
          this.deps.logger.warn({ err: toOffshootError(err).message, template: t.name, host: p.hostId }, 'cannot remove the copy of a template from its host; retried when it answers');
        });
    }
    if (left.length > 0) {
      // Kept `deleting` with the copies still on hosts that did not answer: the periodic check (and the host's return) finishes it.
      await this.deps.fabric.updateTemplate(t.id, (x) => ({ ...x, stateReason: `being deleted; its copies on ${left.map((p) => this.deps.engine.hostName(p.hostId)).join(', ')} are removed once they answer`, placements: left }));
      for (const p of t.placements) if (!left.includes(p)) await this.deps.engine.collectGarbage(p.hostId).catch(() => undefined);
      return;
    }
    await this.deps.fabric.deleteTemplate(t.id);
    await this.unpin(t.id);
    for (const p of t.placements) await this.deps.engine.collectGarbage(p.hostId).catch(() => undefined);
    this.deps.logger.info({ template: t.name }, 'template deleted');
  }

  /**
   * A creation whose task ended without finishing it (its controller died: the engine's recovery rolled its
   * fork journal back): nothing of it stays. One whose task still runs (on any controller) is left alone.
   */
  private async dropIfUnfinished(t: TemplateRecord): Promise<void> {
    const task = t.taskId ? await this.deps.engine.tasks.get(t.taskId).catch(() => undefined) : undefined;
    if (task?.state === 'running') return;
    // Made by a controller that died before it recorded its task: left alone for a while (its task may still run).
    if (!t.taskId && Date.now() - Date.parse(t.createdAt) < UNRECORDED_CREATION_MS) return;
    for (const hostId of new Set([t.originHostId, ...t.placements.map((p) => p.hostId)])) await undoCarry(this.deps, t.id, hostId, t.taskId ?? null);
    await this.deps.fabric.deleteTemplate(t.id);
    await this.unpin(t.id);
  }

  private async checkAll(): Promise<void> {
    for (const t of await this.deps.fabric.listTemplates()) {
      if (t.state === 'ready' || t.state === 'broken') {
        await this.dropStalePlacements(t);
        await this.check(t);
      } else if (t.state === 'creating') await this.dropIfUnfinished(t);
      else if (t.state === 'deleting') await this.finishDelete(t);
    }
  }

  private async checkHost(hostId: string, hostRestarted: boolean): Promise<void> {
    for (const t of await this.deps.fabric.listTemplates()) {
      if (!t.placements.some((p) => p.hostId === hostId)) continue;
      if (t.state === 'ready' || t.state === 'broken') await this.check(t, { hostRestarted, onlyHost: hostId });
      else if (t.state === 'deleting') await this.finishDelete(t);
    }
  }

  /**
   * Checks each copy of the template on its host (broken when its memory, device state or files are gone),
   * then reconciles and refills the pools of the ready ones.
   */
  private async check(t: TemplateRecord, options: { recovering?: boolean; hostRestarted?: boolean; onlyHost?: string } = {}): Promise<void> {
    let current = t;
    for (const p of t.placements) {
      if (options.onlyHost && p.hostId !== options.onlyHost) continue;
      if (p.state !== 'ready') continue;
      const host = this.deps.engine.fleet.hosts().find((h) => h.id === p.hostId);
      if (!host || host.state === 'unreachable') continue;
      const status = await agentOn(this.deps, p.hostId)
        .templateStatus({ templateId: t.id, files: p.files })
        .catch(() => undefined);
      if (status && (!status.present || status.missing.length > 0)) {
        const reason = `its copy on host ${this.deps.engine.hostName(p.hostId)} lost ${status.missing.join(', ')}`;
        this.deps.logger.warn({ template: t.name, reason }, 'template broken');
        current = await this.deps.fabric.updateTemplate(t.id, (x) => {
          const placements = x.placements.map((q) => (q.hostId === p.hostId ? { ...q, state: 'broken' as const, stateReason: reason } : q));
          const allBroken = placements.every((q) => q.state !== 'ready');
          return { ...x, placements, ...(allBroken ? { state: 'broken' as const, stateReason: reason } : {}) };
        });
        for (const m of await this.deps.fabric.listMembers({ templateId: t.id, hostId: p.hostId })) if (m.state === 'ready' || m.state === 'filling') await this.keeper.retire(m, ['ready', 'filling']);
      }
    }
    for (const p of current.placements) {
      if (options.onlyHost && p.hostId !== options.onlyHost) continue;
      if (p.state === 'ready') await this.keeper.reconcile(current, p, { recovering: options.recovering, hostRestarted: options.hostRestarted });
    }
  }

  /**
   * Pins the memory templates and files of the template's host copies in the inventory (holder `fabric:ID`, no
   * owner: they outlive controllers), so no controller's garbage collection asks a host to release them.
   */
  private pin(templateId: string, placements: TemplatePlacement[]): Promise<void> {
    const paths = placements.flatMap((p) => [...(p.memoryTemplateId ? [`${TEMPLATE_PIN}${p.memoryTemplateId}`] : []), ...p.files]);
    return this.deps.engine.coordinator.store.pins.add(`fabric:${templateId}`, paths, null);
  }

  private unpin(templateId: string): Promise<void> {
    return this.deps.engine.coordinator.store.pins.remove(`fabric:${templateId}`);
  }

  private async view(t: TemplateRecord): Promise<TemplateView> {
    const members = await this.deps.fabric.listMembers({ templateId: t.id });
    return {
      ...t,
      placements: t.placements.map((p) => {
        const children: Record<MemberState, number> = { filling: 0, ready: 0, claimed: 0, retiring: 0 };
        for (const m of members) if (m.hostId === p.hostId) children[m.state]++;
        return { ...p, host: this.deps.engine.hostName(p.hostId), children };
      }),
    };
  }
}
