// Pools of ready children: for each host a template is placed on, keep
// `ready` children forked from it, pre-registered (VM records, and pool rows
// in the `ready` state), paused or running idle (warm), within a memory
// budget. A refill is a task (`template.refill`): it retires children above
// the target (newest first) and fills up to it, a few children at a time.
// It is asked for after every hand-out, after a scale, when a host comes
// back, and by the periodic check. Before each batch of new children a
// refill waits until no claim of this controller is handing out a child of
// the pool (at most REFILL_YIELD_MS): a new child's QEMU start, device-state
// load and warm-up take far more CPU than a claim's guest step, and when 20
// claims arrive at once the first one's refill would otherwise run beside the
// other 19 guest steps (measured: the last claims of a wave of 20 ended 60 to
// 100 ms later, or the whole wave did when the first claim ended early). A refill, and the reconcile below, hold
// the pool's claim in the inventory (`fabric-pool:<template>:<host>`, kept
// alive by the controller's beat), so across controllers one at a time works
// on a pool; a controller that finds the claim held leaves the pool to its
// holder (a claim of a controller that died expires with its lease).
//
// The periodic check (reconcile) also keeps the pool rows true to their VMs:
// a row whose VM is gone is dropped; a ready child whose QEMU ended (or was
// killed from outside) is retired; a row a dead controller left filling or
// retiring is finished off; and the host's copy of the template is checked
// (templateStatus): one whose memory, device state or files are gone is
// `broken`, and its ready children are retired (they could not be restarted
// or forked, and a claim must not get them).
import { randomBytes } from 'node:crypto';
import { OffshootError, toOffshootError } from '../../common/index.ts';
import { newVmId } from '../ids.ts';
import type { TaskContext } from '../tasks.ts';
import { removeChild, spawnChild } from './children.ts';
import type { FabricDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import type { PoolMember, TemplatePlacement, TemplateRecord } from './records.ts';

/** Children made at once by one refill (each is mostly waiting on QEMU and the guest). */
const FILL_CONCURRENCY = 2;
/** What a child is assumed to hold until the pool has children to measure. */
const DEFAULT_CHILD_BYTES = 48 * 2 ** 20;
/** A row left filling or retiring (by a controller that died) longer than this is finished off. */
const STALE_MS = 2 * 60_000;
/** The longest a refill waits for the pool's hand-outs to end before it makes children anyway (claims that never stop coming). */
const REFILL_YIELD_MS = 2_000;

export interface RefillResult {
  template: string;
  host: string;
  ready: number;
  added: string[];
  retired: string[];
  note: string | null;
}

export function poolKey(templateId: string, hostId: string): string {
  return `fabric-pool:${templateId}:${hostId}`;
}

export class PoolKeeper {
  private readonly refills = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  /** Hand-outs of each pool's children running in this controller now, and the refills waiting for them to end. */
  private readonly handingOut = new Map<string, number>();
  private readonly waitingForHandOuts = new Map<string, Set<() => void>>();
  private closed = false;

  constructor(private readonly deps: FabricDeps) {}

  /** Asks for the pool on the host to be brought to its settings (a refill task, unless one runs: then once more after it). */
  request(templateId: string, hostId: string): void {
    if (this.closed) return;
    const key = poolKey(templateId, hostId);
    if (this.refills.has(key)) {
      this.again.add(key);
      return;
    }
    const run = this.runRefill(templateId, hostId)
      .catch((err: unknown) => this.deps.logger.warn({ err: toOffshootError(err).message, templateId, hostId }, 'pool refill failed'))
      .finally(() => {
        this.refills.delete(key);
        if (this.again.delete(key)) this.request(templateId, hostId);
      });
    this.refills.set(key, run);
  }

  /** Counts a hand-out of a child of the pool until the returned function is called (a refill yields to it). */
  handOutStarted(templateId: string, hostId: string): () => void {
    const key = poolKey(templateId, hostId);
    this.handingOut.set(key, (this.handingOut.get(key) ?? 0) + 1);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      const left = (this.handingOut.get(key) ?? 1) - 1;
      if (left > 0) {
        this.handingOut.set(key, left);
        return;
      }
      this.handingOut.delete(key);
      for (const wake of [...(this.waitingForHandOuts.get(key) ?? [])]) wake();
    };
  }

  /** Resolves once no hand-out of the pool runs in this controller, or after `maxMs`. */
  private async handOutsEnded(key: string, maxMs: number): Promise<void> {
    if (!this.handingOut.get(key)) return;
    let waiters = this.waitingForHandOuts.get(key);
    if (!waiters) this.waitingForHandOuts.set(key, (waiters = new Set()));
    const set = waiters;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, maxMs);
      function done() {
        clearTimeout(timer);
        set.delete(done);
        resolve();
      }
      set.add(done);
    });
    if (set.size === 0 && this.waitingForHandOuts.get(key) === set) this.waitingForHandOuts.delete(key);
  }

  /** Waits for the refills running now (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.refills.size > 0) await Promise.allSettled([...this.refills.values()]);
  }

  close(): void {
    this.closed = true;
  }

  /** Runs `fn` holding the pool's claim; null (nothing done) when another refill or reconcile holds it, on any controller. */
  private async withPool<T>(templateId: string, hostId: string, operation: string, fn: () => Promise<T>): Promise<T | null> {
    const coordinator = this.deps.engine.coordinator;
    let claim;
    try {
      claim = await coordinator.claim(poolKey(templateId, hostId), operation, { long: true });
    } catch (err) {
      if (err instanceof OffshootError && err.code === 'BUSY') return null;
      throw err;
    }
    try {
      return await fn();
    } finally {
      await coordinator.release(claim).catch((err: unknown) => this.deps.logger.warn({ err, templateId, hostId }, 'cannot release a pool claim; it expires by itself'));
    }
  }

  private async runRefill(templateId: string, hostId: string): Promise<void> {
    const plan = await this.plan(templateId, hostId);
    if (!plan || (plan.add === 0 && plan.retire.length === 0)) return;
    await this.withPool(templateId, hostId, 'template.refill', async () => {
      const target = { id: templateId, name: `${plan.template.name}@${this.deps.engine.hostName(hostId)}` };
      const task = await this.deps.engine.tasks.start('template.refill', target, (ctx) => this.refill(templateId, hostId, ctx));
      await this.deps.engine.tasks.wait(task.id);
    });
  }

  /** What the pool needs now: children to add, and ready ones to retire (newest first); null when it is not to be kept now. */
  private async plan(templateId: string, hostId: string): Promise<{ template: TemplateRecord; placement: TemplatePlacement; live: PoolMember[]; add: number; retire: PoolMember[] } | null> {
    const template = await this.deps.fabric.getTemplate(templateId);
    const placement = template?.placements.find((p) => p.hostId === hostId);
    if (!template || !placement || template.state !== 'ready' || placement.state !== 'ready') return null;
    const host = this.deps.engine.fleet.hosts().find((h) => h.id === hostId);
    if (!host || host.state === 'unreachable') return null;
    const members = await this.deps.fabric.listMembers({ templateId, hostId });
    const live = members.filter((m) => m.state === 'filling' || m.state === 'ready');
    const excess = live.length - placement.pool.ready;
    const retire = excess > 0 ? live.filter((m) => m.state === 'ready').sort((a, b) => (b.readyAt ?? '').localeCompare(a.readyAt ?? '')).slice(0, excess) : [];
    return { template, placement, live, add: Math.max(0, -excess), retire };
  }

  private async refill(templateId: string, hostId: string, ctx: TaskContext): Promise<RefillResult> {
    const added: string[] = [];
    const retired: string[] = [];
    let note: string | null = null;
    let failure: unknown;
    let plan = await this.plan(templateId, hostId);
    const result = (): RefillResult => ({ template: plan?.template.name ?? templateId, host: this.deps.engine.hostName(hostId), ready: 0, added, retired, note });
    while (plan && (plan.add > 0 || plan.retire.length > 0)) {
      for (const member of plan.retire) {
        await ctx.progress(0.1, `retiring ${member.vmId} (the pool holds more than ${plan.placement.pool.ready})`);
        if (await this.retire(member, ['ready'])) retired.push(member.vmId);
      }
      if (plan.add > 0) {
        const room = await this.room(plan.template, plan.placement, plan.live);
        if (room.count === 0) {
          note = room.note;
          break;
        }
        await this.handOutsEnded(poolKey(templateId, hostId), REFILL_YIELD_MS);
        const batch = Math.min(plan.add, FILL_CONCURRENCY, room.count);
        await ctx.progress(Math.min(0.9, 0.1 + (0.8 * added.length) / Math.max(1, plan.placement.pool.ready)), `making ${batch} of ${plan.add} children`);
        const made = await Promise.allSettled(Array.from({ length: batch }, () => this.fillOne(plan as NonNullable<typeof plan>)));
        for (const m of made) if (m.status === 'fulfilled' && m.value) added.push(m.value);
        const failed = made.find((m): m is PromiseRejectedResult => m.status === 'rejected');
        if (failed) {
          failure = failed.reason;
          note = `a new child failed: ${toOffshootError(failed.reason).message}`;
          break;
        }
        note = room.note;
      }
      plan = await this.plan(templateId, hostId);
    }
    await this.setNote(templateId, hostId, note);
    const ready = (await this.deps.fabric.listMembers({ templateId, hostId, state: 'ready' })).length;
    // Nothing made and a child failed: the task fails with that child's error (the note stays on the pool).
    if (failure !== undefined && added.length === 0) throw failure;
    return { ...result(), ready };
  }

  /** Makes one child and registers it ready; returns its VM id (null if the pool no longer wanted it). */
  private async fillOne(plan: { template: TemplateRecord; placement: TemplatePlacement }): Promise<string | null> {
    const { template, placement } = plan;
    const vmId = newVmId();
    const name = `${template.name}-${randomBytes(3).toString('hex')}`;
    const now = new Date().toISOString();
    await this.deps.fabric.insertMember({ vmId, templateId: template.id, hostId: placement.hostId, state: 'filling', stateReason: 'being made', createdAt: now, readyAt: null, claimedAt: null, claimId: null, updatedAt: now });
    try {
      const vm = await spawnChild(this.deps, template, placement, { vmId, name, reason: `filling the pool of template ${template.name}`, warmUp: true, pause: !placement.pool.warm });
      const ready = await this.deps.fabric.transitionMember(vmId, ['filling'], 'ready', { readyAt: new Date().toISOString(), stateReason: null });
      if (!ready) {
        // Retired while it was made (the template is being deleted, or the pool shrank).
        await removeChild(this.deps, vmId);
        await this.deps.fabric.deleteMember(vmId);
        return null;
      }
      await this.deps.engine.states.settle(vmId, [vm.state], vm.state, `ready in the pool of template ${template.name}`);
      return vmId;
    } catch (err) {
      await this.deps.fabric.deleteMember(vmId);
      throw err;
    }
  }

  /**
   * Retires a child (from one of `from`): the row moves to retiring first (a claim can no longer take it),
   * then the child and the row go. Returns whether this call retired it.
   */
  async retire(member: PoolMember, from: Array<'ready' | 'filling' | 'retiring'>): Promise<boolean> {
    const moved = member.state === 'retiring' && from.includes('retiring') ? member : await this.deps.fabric.transitionMember(member.vmId, from.filter((s) => s !== 'retiring'), 'retiring');
    if (!moved) return false;
    await removeChild(this.deps, member.vmId);
    await this.deps.fabric.deleteMember(member.vmId);
    return true;
  }

  /** How many more children the memory budget lets the pool hold on the host now, and why not more. */
  private async room(template: TemplateRecord, placement: TemplatePlacement, live: PoolMember[]): Promise<{ count: number; note: string | null }> {
    const max = placement.pool.maxMemoryBytes;
    if (max === null) return { count: Number.MAX_SAFE_INTEGER, note: null };
    const agent = agentOn(this.deps, placement.hostId);
    const status = await agent.templateStatus({ templateId: template.id, files: [] });
    let held = status.memoryBytes ?? template.memoryMiB * 2 ** 20;
    const measured: number[] = [];
    for (const m of live) {
      const stats = await agent.memoryStats({ vmId: m.vmId }).catch(() => undefined);
      if (stats) measured.push(stats.privateKiB * 1024);
    }
    held += measured.reduce((a, b) => a + b, 0) + (live.length - measured.length) * DEFAULT_CHILD_BYTES;
    const perChild = measured.length ? measured.reduce((a, b) => a + b, 0) / measured.length : DEFAULT_CHILD_BYTES;
    const count = Math.max(0, Math.floor((max - held) / perChild));
    const mib = (b: number) => `${Math.round(b / 2 ** 20)} MiB`;
    return { count, note: count === 0 ? `held at ${live.length} children by its memory budget (${mib(held)} of ${mib(max)} held, ${mib(perChild)} a child)` : null };
  }

  private async setNote(templateId: string, hostId: string, note: string | null): Promise<void> {
    await this.deps.fabric.updateTemplate(templateId, (t) => ({ ...t, placements: t.placements.map((p) => (p.hostId === hostId ? { ...p, poolNote: note } : p)) })).catch(() => undefined);
  }

  /**
   * Keeps the pool's rows true to their VMs on one host (see the header), then asks for a refill.
   * `hostRestarted`: the host's agent came back, so what it was making for this controller is gone.
   */
  async reconcile(template: TemplateRecord, placement: TemplatePlacement, options: { hostRestarted?: boolean; recovering?: boolean } = {}): Promise<void> {
    // Under the pool's claim: rows being made or retired by a refill (here or on another controller) are left alone.
    await this.withPool(template.id, placement.hostId, 'template.reconcile', async () => {
      const members = await this.deps.fabric.listMembers({ templateId: template.id, hostId: placement.hostId });
      for (const m of members) {
        const vm = await this.deps.inventory.getVm(m.vmId);
        if (!vm) {
          await this.deps.fabric.deleteMember(m.vmId);
          continue;
        }
        if (m.state === 'claimed') continue;
        if (m.state === 'ready') {
          if (vm.state === 'unknown' || vm.state === 'paused' || vm.state === 'running') continue;
          this.deps.logger.warn({ vm: vm.name, state: vm.state, template: template.name }, 'a ready pool child is no longer running: retiring it');
          await this.retire(m, ['ready']);
          continue;
        }
        const stale = options.recovering || options.hostRestarted || Date.now() - Date.parse(m.updatedAt) > STALE_MS;
        if (stale && vm.state !== 'unknown') await this.retire(m, ['filling', 'retiring']);
      }
      return true;
    });
    // Asked for even when a refill held the pool meanwhile (e.g. one failing on a host that just came back): it runs once more after it.
    if (template.state === 'ready' && placement.state === 'ready') this.request(template.id, placement.hostId);
  }
}
