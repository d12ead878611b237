// The engine's migration front: validates a migrate request, claims the VM
// (migrating: nothing else acts on it until it runs at one host), runs the
// migration as a `vm.migrate` task (run-migration.ts), and cancels one on
// request before its switch-over (after it, a cancel is too late and the task
// finishes).
import type { EngineContext } from '../engine-context.ts';
import type { TaskRecord, VmRecord } from '../records.ts';
import { parseRequest } from '../requests.ts';
import { destinationOf, migrateRequestSchema, tuningOf } from './migrate-request.ts';
import { MigrationPlanError } from './plan-migration.ts';
import { runMigration } from './run-migration.ts';
import { TaskCancellers } from './task-cancellers.ts';

export class Migrations {
  private readonly cancellers: TaskCancellers;

  constructor(private readonly ctx: EngineContext) {
    this.cancellers = new TaskCancellers(ctx);
  }

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
      this.cancellers.track(task.id, controller);
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
    return this.cancellers.cancel(taskId, 'the migration', 'it runs on at its source');
  }
}
