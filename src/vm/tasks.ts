// Tasks: every long operation (start, stop, fork, checkpoint, restore, copy
// jobs, ...) is a persisted task with progress and a result or a typed error,
// as in vCenter. The API returns the task at once; callers follow it through
// events or wait.
// In a fleet a task belongs to the controller that runs it: it is stored with
// that controller's lease (in the same statement, so nobody takes it over
// first), the controller's beat renews the lease, and every write of the task
// is fenced by its owner. A controller that dies loses its tasks when their
// leases expire; another takes each over (claimExpiredTasks) and rolls it
// forward or back from its journal (recovery.ts). A controller that was only
// cut off finds its writes refused (LEASE_LOST): the task's signal aborts,
// and its work stops without undoing anything (the new owner does that).
// Pins held under `task:<id>` (what the task made and no record names yet)
// go when the task ends, whoever ends it.
import { NotFoundError, OffshootError, sleep, toOffshootError } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { GcPins, TaskLeases } from './coordination.ts';
import type { EventBus } from './events.ts';
import { newTaskId } from './ids.ts';
import type { Inventory, TaskRecord } from './records.ts';
import { isTaskDone } from './records.ts';

export interface TaskContext {
  /**
   * Reports progress (0..1), a short message of the current phase, and optionally live figures (kept in the task's
   * result while it runs); best effort while the inventory is down.
   */
  progress(fraction: number, message: string, detail?: Record<string, unknown>): Promise<void>;
  /** Persists what a crash recovery would need to roll this task back (kept in the task's result until it ends). */
  journal(data: unknown): Promise<void>;
  /** The task's id (pins of what it made are held as `task:<id>`). */
  readonly taskId: string;
  /**
   * Aborted when this controller lost the task (another controller took it over after its lease expired): the
   * work must stop and undo nothing, since its new owner rolls it forward or back.
   */
  readonly signal: AbortSignal;
}

/** How a controller owns its tasks (always given by the engine). */
export interface TaskOwnership {
  owner: string;
  leaseMs: number;
  leases: TaskLeases;
  pins: GcPins;
}

/**
 * What a task's work returns to leave the task running for another controller (or this one's next life) to take
 * over at once: this controller stops (e.g. shuts down) and gives up the lease without ending the task.
 */
export const HAND_OVER: unique symbol = Symbol('hand the task over');

/** The pin holder of what a task made. */
export function taskPinHolder(taskId: string): string {
  return `task:${taskId}`;
}

function isLeaseLost(err: unknown): boolean {
  return err instanceof OffshootError && err.code === 'LEASE_LOST';
}

function isUnavailable(err: unknown): boolean {
  return err instanceof OffshootError && err.code === 'INVENTORY_UNAVAILABLE';
}

export class TaskRunner {
  private readonly waiters = new Map<string, Promise<TaskRecord>>();
  /** Aborted when the lease of a task running here is lost. */
  private readonly lost = new Map<string, AbortController>();

  constructor(
    private readonly inventory: Inventory,
    private readonly events: EventBus,
    private readonly logger: Logger,
    private readonly ownership?: TaskOwnership,
  ) {}

  /** The controller that owns the tasks this runner starts. */
  get owner(): string | undefined {
    return this.ownership?.owner;
  }

  /** Persists a new task (leased to this controller) and runs `work` in the background; returns the task as first stored. */
  async start(kind: string, target: { id: string; name: string }, work: (ctx: TaskContext) => Promise<unknown>): Promise<TaskRecord> {
    const now = new Date().toISOString();
    const task: TaskRecord = { id: newTaskId(), kind, targetId: target.id, targetName: target.name, state: 'running', progress: 0, message: 'started', result: null, error: null, createdAt: now, updatedAt: now };
    await this.inventory.insertTask(task, this.ownership ? { lease: { owner: this.ownership.owner, ttlMs: this.ownership.leaseMs } } : {});
    this.events.publish({ type: 'task', task, at: now });
    this.run(task, work);
    return task;
  }

  /**
   * Goes on with a task this controller took over (it reattached to the host's operation): `work` finishes it,
   * and the task ends as `work` does. The task keeps its journal.
   */
  resume(task: TaskRecord, work: (ctx: TaskContext) => Promise<unknown>): void {
    this.run(task, work);
  }

  /** Whether the task runs in this process. */
  runsHere(id: string): boolean {
    return this.waiters.has(id);
  }

  /** Ids of the tasks running in this process. */
  runningHere(): string[] {
    return [...this.waiters.keys()];
  }

  private fence(): { owner?: string } {
    return this.ownership ? { owner: this.ownership.owner } : {};
  }

  private run(task: TaskRecord, work: (ctx: TaskContext) => Promise<unknown>): void {
    let journal: unknown = (task.result as { journal?: unknown } | null)?.journal;
    const lost = new AbortController();
    this.lost.set(task.id, lost);
    const onLost = (err: unknown) => {
      if (!lost.signal.aborted) {
        this.logger.warn({ taskId: task.id, kind: task.kind, err: (err as Error).message }, 'this controller lost the task to another one; stopping it here');
        lost.abort(err);
      }
    };
    const ctx: TaskContext = {
      taskId: task.id,
      signal: lost.signal,
      progress: async (fraction, message, detail) => {
        try {
          await this.update(task.id, { progress: Math.max(0, Math.min(1, fraction)), message, ...(detail ? { result: { ...(journal !== undefined ? { journal } : {}), progress: detail } } : {}) });
        } catch (err) {
          if (isLeaseLost(err)) {
            onLost(err);
            throw err;
          }
          // Progress is news, not state: an inventory that is down does not fail the operation.
          if (!isUnavailable(err)) throw err;
        }
      },
      journal: async (data) => {
        journal = data;
        try {
          await this.inventory.updateTask(task.id, { result: { journal: data }, updatedAt: new Date().toISOString() }, this.fence());
        } catch (err) {
          if (isLeaseLost(err)) onLost(err);
          throw err;
        }
      },
    };
    const done = (async () => {
      let outcome: Partial<TaskRecord>;
      try {
        const result = await work(ctx);
        if (result === HAND_OVER) return await this.handOver(task);
        outcome = { state: 'succeeded', progress: 1, message: 'done', result: result ?? null };
      } catch (err) {
        const error = toOffshootError(lost.signal.aborted ? lost.signal.reason : err);
        if (!lost.signal.aborted) this.logger.warn({ taskId: task.id, kind: task.kind, target: task.targetName, code: error.code, err: error.message }, 'task failed');
        outcome = { state: 'failed', message: error.message, error: error.toJSON(), ...(journal !== undefined ? { result: { journal } } : {}) };
      }
      try {
        if (lost.signal.aborted) throw lost.signal.reason;
        const ended = await this.update(task.id, outcome);
        await this.ownership?.pins.remove(taskPinHolder(task.id)).catch((err: unknown) => this.logger.warn({ err, taskId: task.id }, 'cannot drop the pins of a finished task'));
        return ended;
      } catch (err) {
        // Taken over meanwhile: the new owner ends it; wait for that.
        if (!isLeaseLost(err)) throw err;
        onLost(err);
        return this.poll(task.id);
      }
    })();
    this.waiters.set(task.id, done);
    // Recording the end itself can fail (the inventory's disk is full): log it, never leave it unhandled.
    done
      .catch((err: unknown) => this.logger.error({ err, taskId: task.id, kind: task.kind }, 'cannot record the end of a task'))
      .finally(() => {
        this.waiters.delete(task.id);
        this.lost.delete(task.id);
      });
  }

  /** Gives up the lease of a task that stays running: the next controller to look takes it over. */
  private async handOver(task: TaskRecord): Promise<TaskRecord> {
    if (this.ownership) await this.ownership.leases.release(task.id, this.ownership.owner);
    this.logger.info({ taskId: task.id, kind: task.kind }, 'task handed over (left running for another controller)');
    return (await this.inventory.getTask(task.id)) ?? task;
  }

  private async update(id: string, patch: Partial<TaskRecord>): Promise<TaskRecord> {
    const task = await this.inventory.updateTask(id, { ...patch, updatedAt: new Date().toISOString() }, this.fence());
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
    // Running on another controller (or to be taken over): poll until it settles.
    return this.poll(id);
  }

  private async poll(id: string): Promise<TaskRecord> {
    for (;;) {
      await sleep(200);
      const current = await this.get(id).catch((err: unknown) => {
        if (isUnavailable(err)) return undefined;
        throw err;
      });
      if (current && isTaskDone(current.state)) return current;
    }
  }

  /** Waits for every task still running in this process (used on shutdown). */
  async drain(): Promise<void> {
    await Promise.allSettled([...this.waiters.values()]);
  }

  /**
   * The beat: renews the leases of this controller's tasks, and stops those whose lease another controller took
   * over meanwhile (this one was cut off from the inventory for longer than a lease).
   */
  async renewLeases(): Promise<void> {
    if (!this.ownership) return;
    const { leases, owner, leaseMs } = this.ownership;
    const renewed = await leases.renewAll(owner, leaseMs);
    if (renewed >= this.lost.size) return;
    for (const [id, lost] of this.lost) {
      if (lost.signal.aborted) continue;
      const lease = await leases.get(id);
      if (lease?.owner !== owner) lost.abort(new OffshootError('LEASE_LOST', `task ${id} was taken over by ${lease?.owner ?? 'another controller'}`, { id, holder: lease?.owner ?? null }, 409));
    }
  }

  /**
   * Tasks to recover now: those this controller ran in a previous life (same controller id: the daemon of this
   * home restarted), and those whose owner's lease expired; each is leased to this controller from now on.
   */
  async interrupted(): Promise<TaskRecord[]> {
    if (!this.ownership) return (await this.inventory.listTasks({ state: 'running' })).filter((t) => !this.waiters.has(t.id)).reverse();
    const { leases, owner, leaseMs } = this.ownership;
    const mine: TaskRecord[] = [];
    for (const lease of await leases.list()) {
      if (lease.owner !== owner || this.waiters.has(lease.taskId)) continue;
      await leases.acquire(lease.taskId, owner, leaseMs);
      const task = await this.inventory.getTask(lease.taskId);
      if (task) mine.push(task);
    }
    for (;;) {
      const batch = await leases.claimExpiredTasks(owner, leaseMs, 50);
      mine.push(...batch);
      if (batch.length < 50) return mine;
    }
  }

  /** Marks a task a controller left running as failed, saying what recovery did. */
  async failInterrupted(task: TaskRecord, recovery: string): Promise<TaskRecord> {
    const message = `interrupted: the controller running this task stopped; ${recovery}`;
    const ended = await this.update(task.id, { state: 'failed', message, error: { code: 'TASK_INTERRUPTED', message, details: { recovery } } });
    await this.ownership?.pins.remove(taskPinHolder(task.id)).catch(() => undefined);
    return ended;
  }
}
