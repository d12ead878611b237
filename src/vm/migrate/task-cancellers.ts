// The migrations this controller runs, by task id, with the abort that
// cancels each before its switch-over: shared by single and group
// migrations and drains. An entry goes when its task ends. A cancel asked
// on another controller reaches these through the task's row (requested).
import { IllegalStateError, OffshootError } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskRecord } from '../records.ts';

export class TaskCancellers {
  private readonly controllers = new Map<string, AbortController>();

  constructor(private readonly ctx: EngineContext) {}

  /** Keeps `controller` as the way to cancel task `taskId` until the task ends. */
  track(taskId: string, controller: AbortController): void {
    this.controllers.set(taskId, controller);
    this.ctx.tasks
      .wait(taskId)
      .catch(() => undefined)
      .finally(() => this.controllers.delete(taskId));
  }

  has(taskId: string): boolean {
    return this.controllers.has(taskId);
  }

  /** How many tasks this controller could cancel. */
  get size(): number {
    return this.controllers.size;
  }

  /** Aborts the tasks among `taskIds` that run here (cancel requests another controller wrote into their rows). */
  requested(taskIds: string[], what: string, outcome: string): void {
    for (const id of taskIds) {
      if (this.controllers.has(id)) void this.cancel(id, what, outcome).catch(() => undefined);
    }
  }

  /** Aborts the task with TASK_CANCELLED (`what` names it, `outcome` says where its VMs run on); resolves with the finished task. */
  async cancel(taskId: string, what: string, outcome: string): Promise<TaskRecord> {
    const controller = this.controllers.get(taskId);
    const task = await this.ctx.tasks.get(taskId);
    if (!controller) throw new IllegalStateError(`task ${taskId}`, task.state, ['running'], 'cancel');
    controller.abort(new OffshootError('TASK_CANCELLED', `${what} of ${task.targetName} was cancelled by request; ${outcome}`, { id: taskId, kind: task.kind }, 409));
    return this.ctx.tasks.wait(taskId);
  }
}
