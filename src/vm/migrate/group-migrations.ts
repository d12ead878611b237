// The engine's group migration front: validates a group migrate request,
// claims every member (migrating: nothing else acts on them until each runs at
// one host), runs the group as one `vm.migrate-group` task (run-group.ts), and
// cancels it on request before its commit (after it, a cancel is too late and
// the task finishes).
import { InvalidInputError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { groupMigrateRequestSchema, groupTuningOf } from './group-request.ts';
import { MigrationPlanError } from './plan-migration.ts';
import type { GroupMember } from './run-group.ts';
import { runGroupMigration } from './run-group.ts';
import { TaskCancellers } from './task-cancellers.ts';

export const GROUP_MIGRATE_TASK_KIND = 'vm.migrate-group';

export class GroupMigrations {
  private readonly cancellers: TaskCancellers;

  constructor(
    private readonly ctx: EngineContext,
    private readonly resolveVm: (ref: string) => Promise<VmRecord>,
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
        runGroupMigration(this.ctx, members, request, taskCtx, controller.signal).finally(() => Promise.all(members.map((m) => this.ctx.states.release(m.vm.id)))),
      );
      this.cancellers.track(task.id, controller);
      return task;
    } catch (err) {
      await unclaim();
      throw err;
    }
  }

  cancellable(taskId: string): boolean {
    return this.cancellers.has(taskId);
  }

  /** Cancels a group migration before its commit; resolves with the finished task. */
  async cancel(taskId: string): Promise<TaskRecord> {
    return this.cancellers.cancel(taskId, 'the group migration', 'every member runs on at its source');
  }
}
