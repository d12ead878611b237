// The engine's migration front: validates a migrate request, claims the VM
// (migrating: nothing else acts on it until it runs at one host), runs the
// migration as a `vm.migrate` task (run-migration.ts), and cancels one on
// request before its switch-over (after it, a cancel is too late and the task
// finishes).
import { IllegalStateError, OffshootError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { destinationOf, migrateRequestSchema, tuningOf } from './migrate-request.ts';
import { MigrationPlanError } from './plan-migration.ts';
import { runMigration } from './run-migration.ts';

export class Migrations {
  private readonly cancellers = new Map<string, AbortController>();

  constructor(private readonly ctx: EngineContext) {}

  async migrate(vm: VmRecord, input: unknown): Promise<TaskRecord> {
    const request = parseRequest('migrate request', migrateRequestSchema, input);
    tuningOf(request);
    const destination = await this.ctx.fleet.resolve(destinationOf(request));
    const source = await this.ctx.fleet.resolve(vm.hostId);
    if (source.id === destination.id) throw new MigrationPlanError(`VM "${vm.name}" already runs on host ${destination.name}`, { vm: vm.name, host: destination.name });
    const { vm: claimed, previous } = await this.ctx.states.claimFrom(vm.id, 'migrate', 'migrating', `with a migration to ${destination.name}`);
    const controller = new AbortController();
    try {
      const task = await this.ctx.tasks.start('vm.migrate', claimed, (taskCtx) => runMigration(this.ctx, claimed, previous, source, destination, request, taskCtx, controller.signal).finally(() => this.ctx.states.release(vm.id)));
      this.cancellers.set(task.id, controller);
      this.ctx.tasks.wait(task.id).catch(() => undefined).finally(() => this.cancellers.delete(task.id));
      return task;
    } catch (err) {
      this.ctx.states.release(vm.id);
      await this.ctx.states.settle(vm.id, ['migrating'], previous, null).catch(() => undefined);
      throw err;
    }
  }

  cancellable(taskId: string): boolean {
    return this.cancellers.has(taskId);
  }

  /** Cancels a migration before its switch-over; resolves with the finished task. */
  async cancel(taskId: string): Promise<TaskRecord> {
    const controller = this.cancellers.get(taskId);
    if (!controller) {
      const task = await this.ctx.tasks.get(taskId);
      throw new IllegalStateError(`task ${taskId}`, task.state, ['running'], 'cancel');
    }
    const task = await this.ctx.tasks.get(taskId);
    controller.abort(new OffshootError('TASK_CANCELLED', `the migration of ${task.targetName} was cancelled by request; it runs on at its source`, { id: taskId, kind: task.kind }, 409));
    return this.ctx.tasks.wait(taskId);
  }
}
