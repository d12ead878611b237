// Tasks: every long operation (start, stop, later fork, checkpoint, migrate) is
// a persisted task with progress and a result or a typed error, as in vCenter.
// The API returns the task at once; callers follow it through events or wait.
import { NotFoundError, toOffshootError } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { EventBus } from './events.ts';
import { newTaskId } from './ids.ts';
import type { Inventory, TaskRecord } from './records.ts';
import { isTaskDone } from './records.ts';

export interface TaskContext {
  /** Reports progress (0..1), a short message of the current phase, and optionally live figures (kept in the task's result while it runs). */
  progress(fraction: number, message: string, detail?: Record<string, unknown>): Promise<void>;
  /** Persists what a crash recovery would need to roll this task back (kept in the task's result until it ends). */
  journal(data: unknown): Promise<void>;
}

export class TaskRunner {
  private readonly waiters = new Map<string, Promise<TaskRecord>>();

  constructor(
    private readonly inventory: Inventory,
    private readonly events: EventBus,
    private readonly logger: Logger,
  ) {}

  /** Persists a new task and runs `work` in the background; returns the task as first stored. */
  async start(kind: string, target: { id: string; name: string }, work: (ctx: TaskContext) => Promise<unknown>): Promise<TaskRecord> {
    const now = new Date().toISOString();
    const task: TaskRecord = { id: newTaskId(), kind, targetId: target.id, targetName: target.name, state: 'running', progress: 0, message: 'started', result: null, error: null, createdAt: now, updatedAt: now };
    await this.inventory.insertTask(task);
    this.events.publish({ type: 'task', task, at: now });
    this.run(task, work);
    return task;
  }

  /**
   * Goes on with a task a previous controller left running (it reattached to the host's operation): `work`
   * finishes it, and the task ends as `work` does. The task keeps its journal.
   */
  resume(task: TaskRecord, work: (ctx: TaskContext) => Promise<unknown>): void {
    this.run(task, work);
  }

  private run(task: TaskRecord, work: (ctx: TaskContext) => Promise<unknown>): void {
    let journal: unknown = (task.result as { journal?: unknown } | null)?.journal;
    const ctx: TaskContext = {
      progress: async (fraction, message, detail) => {
        await this.update(task.id, { progress: Math.max(0, Math.min(1, fraction)), message, ...(detail ? { result: { ...(journal !== undefined ? { journal } : {}), progress: detail } } : {}) });
      },
      journal: async (data) => {
        journal = data;
        await this.inventory.updateTask(task.id, { result: { journal: data }, updatedAt: new Date().toISOString() });
      },
    };
    const done = (async () => {
      try {
        const result = await work(ctx);
        return await this.update(task.id, { state: 'succeeded', progress: 1, message: 'done', result: result ?? null });
      } catch (err) {
        const error = toOffshootError(err);
        this.logger.warn({ taskId: task.id, kind: task.kind, target: task.targetName, code: error.code, err: error.message }, 'task failed');
        return await this.update(task.id, { state: 'failed', message: error.message, error: error.toJSON(), ...(journal !== undefined ? { result: { journal } } : {}) });
      }
    })();
    this.waiters.set(task.id, done);
    // Recording the end itself can fail (the inventory's disk is full): log it, never leave it unhandled.
    done.catch((err: unknown) => this.logger.error({ err, taskId: task.id, kind: task.kind }, 'cannot record the end of a task')).finally(() => this.waiters.delete(task.id));
  }

  private async update(id: string, patch: Partial<TaskRecord>): Promise<TaskRecord> {
    const task = await this.inventory.updateTask(id, { ...patch, updatedAt: new Date().toISOString() });
    this.events.publish({ type: 'task', task, at: task.updatedAt });
    return task;
  }

  async get(id: string): Promise<TaskRecord> {
    const task = await this.inventory.getTask(id);
    if (!task) throw new NotFoundError('task', id);
    return task;
  }

  list(limit = 50): Promise<TaskRecord[]> {
    return this.inventory.listTasks({ limit });
  }

  /** Resolves with the finished task (succeeded or failed). */
  async wait(id: string): Promise<TaskRecord> {
    const pending = this.waiters.get(id);
    if (pending) return pending;
    const task = await this.get(id);
    if (isTaskDone(task.state)) return task;
    // Running in another process or orphaned: poll until it settles.
    while (true) {
      await new Promise((r) => setTimeout(r, 200));
      const current = await this.get(id);
      if (isTaskDone(current.state)) return current;
    }
  }

  /** Waits for every task still running in this process (used on shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.waiters.values()]);
  }

  /** Tasks a previous daemon left running (with their journals, for rollback). */
  async interrupted(): Promise<TaskRecord[]> {
    return (await this.inventory.listTasks({ state: 'running' })).filter((t) => !this.waiters.has(t.id));
  }

  /** Marks a task left running by a previous daemon as failed, saying what recovery did. */
  async failInterrupted(task: TaskRecord, recovery: string): Promise<TaskRecord> {
    const message = `interrupted: the daemon stopped while this task ran; ${recovery}`;
    return this.update(task.id, { state: 'failed', message, error: { code: 'TASK_INTERRUPTED', message, details: { recovery } } });
  }
}
