// The engine's group migration front: validates a group migrate request,
// claims every member (migrating: nothing else acts on them until each runs at
// one host), runs the group as one `vm.migrate-group` task (run-group.ts), and
// cancels it on request before its commit (after it, a cancel is too late and
// the task finishes), here or through the task's row on another controller.
// The group first waits in the queue until every member has its slots (each
// member counts one at its source and one at its destination, admission.ts);
// its tuning comes from its options, else the policy of its source when all
// members share one, else the fleet's (policy.ts), else the group's own
// defaults (downtime limit 150 ms, auto-converge on).
import { InvalidInputError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { groupMigrateRequestSchema, groupTuningOf } from './group-request.ts';
import type { GroupMigrateRequest } from './group-request.ts';
import type { TaskContext } from '../tasks.ts';
import { MigrationPlanError } from './plan-migration.ts';
import type { GroupMember } from './run-group.ts';
import { runGroupMigration } from './run-group.ts';
import { TaskCancellers } from './task-cancellers.ts';
import { MigrationAdmission, addNeeds } from './admission.ts';
import type { SlotNeeds } from './admission.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import { policyFor, requestPolicy } from './policy.ts';
import type { MigrationPolicyStore } from './policy.ts';

export const GROUP_MIGRATE_TASK_KIND = 'vm.migrate-group';

export class GroupMigrations {
  private readonly cancellers: TaskCancellers;

  constructor(
    private readonly ctx: EngineContext,
    private readonly resolveVm: (ref: string) => Promise<VmRecord>,
    private readonly admission: MigrationAdmission,
    private readonly policies: MigrationPolicyStore,
  ) {
    this.cancellers = new TaskCancellers(ctx);
  }

  async migrate(input: unknown): Promise<TaskRecord> {
    const request = parseRequest('group migrate request', groupMigrateRequestSchema, input);
    groupTuningOf(request);
    const planned: Array<Omit<GroupMember, 'previous'>> = [];
    for (const m of request.members) {
      const vm = await this.resolveVm(m.vm);
      if (planned.some((p) => p.vm.id === vm.id)) throw new InvalidInputError(`VM "${vm.name}" is named twice in the group`, { vm: vm.name });
      const destination = await this.ctx.fleet.resolve(m.to);
      const source = await this.ctx.fleet.resolve(vm.hostId);
      if (source.id === destination.id) throw new MigrationPlanError(`VM "${vm.name}" already runs on host ${destination.name}`, { vm: vm.name, host: destination.name });
      planned.push({ vm, source, destination });
    }
    const needs: SlotNeeds = { out: {}, in: {} };
    for (const p of planned) addNeeds(needs, p.source.id, p.destination.id);
    await this.admission.check(needs);
    const members: GroupMember[] = [];
    const unclaim = async () => {
      for (const m of members) {
        await this.ctx.states.release(m.vm.id);
        await this.ctx.states.settle(m.vm.id, ['migrating'], m.previous, null).catch(() => undefined);
      }
    };
    const names = planned.map((p) => p.vm.name).join(',');
    try {
      for (const p of planned) {
        const { vm, previous } = await this.ctx.states.claimFrom(p.vm.id, 'migrate', 'migrating', `with a group migration to ${p.destination.name}`);
        members.push({ ...p, vm, previous });
      }
    } catch (err) {
      await unclaim();
      throw err;
    }
    const controller = new AbortController();
    const first = members[0] as GroupMember;
    try {
      const task = await this.ctx.tasks.start(GROUP_MIGRATE_TASK_KIND, { id: first.vm.id, name: names }, (taskCtx) =>
        this.run(members, request, requestPolicy(input), needs, taskCtx, controller.signal).finally(() => Promise.all(members.map((m) => this.ctx.states.release(m.vm.id)))),
      );
      this.cancellers.track(task.id, controller);
      return task;
    } catch (err) {
      await unclaim();
      throw err;
    }
  }

  /** Queued until every member has its slots, then the group with the policy's values. */
  private async run(members: GroupMember[], request: GroupMigrateRequest, asked: ReturnType<typeof requestPolicy>, needs: SlotNeeds, task: TaskContext, signal: AbortSignal) {
    await task.journal({ mode: request.mode, members: members.map((m) => ({ vmId: m.vm.id, phase: 'queued', previous: m.previous, sourceHostId: m.source.id, destinationHostId: m.destination.id }) as MigrateJournal) });
    let slots;
    try {
      slots = await this.admission.admit(task, needs, AbortSignal.any([signal, task.signal]));
    } catch (err) {
      if (!task.signal.aborted) for (const m of members) await this.ctx.states.settle(m.vm.id, ['migrating'], m.previous, null).catch(() => undefined);
      throw err;
    }
    try {
      const one = (ids: string[]) => (new Set(ids).size === 1 ? (ids[0] as string) : '');
      const policy = await policyFor(this.policies, asked, one(members.map((m) => m.source.id)), one(members.map((m) => m.destination.id)));
      // Where no request or policy set them, a group keeps its own defaults: a lower downtime limit (the barrier and the
      // group's start add to every member's stop) and auto-converge (a member whose guest dirties memory faster than it
      // is sent has its vCPUs throttled, so it converges with the others instead of keeping them held).
      const downtimeLimitMs = policy.sources.downtimeLimitMs === 'default' ? request.downtimeLimitMs : policy.downtimeLimitMs;
      const autoConverge = policy.sources.autoConverge === 'default' ? true : policy.autoConverge;
      const tuned: GroupMigrateRequest = { ...request, maxBandwidth: policy.maxBandwidthBytesPerSecond, downtimeLimitMs, autoConverge };
      const fresh = await Promise.all(members.map(async (m) => ({ ...m, source: await this.ctx.fleet.resolve(m.source.id), destination: await this.ctx.fleet.resolve(m.destination.id) })));
      const result = await runGroupMigration(this.ctx, fresh, tuned, task, signal);
      return { ...result, policy: { ...policy, downtimeLimitMs, autoConverge, postcopy: 'never' as const }, queuedMs: slots.queuedMs };
    } finally {
      await slots.release();
    }
  }

  /** Whether this controller runs a group migration a cancel request could reach. */
  running(): boolean {
    return this.cancellers.size > 0;
  }

  /** Cancel requests another controller wrote for group migrations this one runs. */
  cancelRequested(taskIds: string[]): void {
    this.cancellers.requested(taskIds, 'the group migration', 'every member runs on at its source');
  }

  cancellable(taskId: string): boolean {
    return this.cancellers.has(taskId);
  }

  /** Cancels a group migration before its commit; resolves with the finished task. */
  async cancel(taskId: string): Promise<TaskRecord> {
    return this.cancellers.cancel(taskId, 'the group migration', 'every member runs on at its source');
  }
}
