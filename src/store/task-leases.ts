// Task leases (columns tasks.owner and tasks.lease_expires_at): the controller
// running a task holds its lease and renews it, with its heartbeat, for all of
// its tasks in one statement. A running task whose lease expired (its
// controller died or lost the database for longer than the lease) or that
// never had one (inserted by a controller that died before leasing it, or
// written before leases existed) is taken over by claimExpiredTasks, which
// hands each such task to exactly one caller:
//   UPDATE tasks SET owner = $me, lease_expires_at = $t
//   WHERE id IN (SELECT id FROM tasks WHERE state = 'running' AND lease expired
//                ORDER BY seq LIMIT $n FOR UPDATE SKIP LOCKED) RETURNING *
// On PostgreSQL the row locks make concurrent claimers skip each other's rows
// (and re-check the lease of a row renewed meanwhile); on SQLite the one
// statement is one write transaction, which already excludes other writers.
// Why not pg-boss or graphile-worker: they own the job table, the job's
// lifecycle and the retry policy, while Offshoot's tasks are its API objects
// (ids, progress, results, journal) shared with SQLite, and a taken-over task
// is not retried but reattached or rolled forward or back from its journal.
// What is needed from a queue is one claim statement; it works on both
// databases and keeps the tasks in the one inventory schema.
import type { Kysely } from 'kysely';
import { IllegalStateError, NotFoundError } from '../common/index.ts';
import type { TaskLease, TaskLeases, TaskRecord } from '../vm/index.ts';
import { LeaseLostError } from '../vm/index.ts';
import { expiryAfter } from './clock.ts';
import type { Clock } from './clock.ts';
import type { StoreDialect } from './dialect.ts';
import { taskFromRow } from './rows.ts';
import type { Database } from './schema.ts';

export class KyselyTaskLeases implements TaskLeases {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
    private readonly clock: Clock,
  ) {}

  async acquire(taskId: string, owner: string, ttlMs: number): Promise<TaskLease> {
    const { now, expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = await this.db
      .updateTable('tasks')
      .set({ owner, lease_expires_at: expiresAt })
      .where('id', '=', taskId)
      .where('state', '=', 'running')
      .where((eb) => eb.or([eb('owner', '=', owner), eb('lease_expires_at', 'is', null), eb('lease_expires_at', '<=', now)]))
      .returning(['id', 'owner', 'lease_expires_at'])
      .executeTakeFirst();
    if (row) return { taskId, owner, expiresAt };
    const task = await this.db.selectFrom('tasks').select(['state', 'owner']).where('id', '=', taskId).executeTakeFirst();
    if (!task) throw new NotFoundError('task', taskId);
    if (task.state !== 'running') throw new IllegalStateError(`task ${taskId}`, task.state, ['running'], 'lease');
    throw new LeaseLostError('lease', taskId, owner, task.owner);
  }

  async renewAll(owner: string, ttlMs: number): Promise<number> {
    const { expiresAt } = expiryAfter(this.clock, ttlMs);
    const result = await this.db.updateTable('tasks').set({ lease_expires_at: expiresAt }).where('owner', '=', owner).where('state', '=', 'running').where('lease_expires_at', 'is not', null).executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  async renew(taskId: string, owner: string, ttlMs: number): Promise<TaskLease> {
    const { expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = await this.db.updateTable('tasks').set({ lease_expires_at: expiresAt }).where('id', '=', taskId).where('owner', '=', owner).where('state', '=', 'running').where('lease_expires_at', 'is not', null).returning('id').executeTakeFirst();
    if (row) return { taskId, owner, expiresAt };
    const task = await this.db.selectFrom('tasks').select(['owner']).where('id', '=', taskId).executeTakeFirst();
    if (!task) throw new NotFoundError('task', taskId);
    throw new LeaseLostError('lease', taskId, owner, task.owner === owner ? null : task.owner);
  }

  async release(taskId: string, owner: string): Promise<void> {
    // The owner stays as a record of who ran it last; no lease means nobody holds it.
    await this.db.updateTable('tasks').set({ lease_expires_at: null }).where('id', '=', taskId).where('owner', '=', owner).execute();
  }

  async get(taskId: string): Promise<TaskLease | undefined> {
    const row = await this.db.selectFrom('tasks').select(['owner', 'lease_expires_at']).where('id', '=', taskId).executeTakeFirst();
    return row && row.owner !== null && row.lease_expires_at !== null ? { taskId, owner: row.owner, expiresAt: row.lease_expires_at } : undefined;
  }

  async list(): Promise<TaskLease[]> {
    const rows = await this.db.selectFrom('tasks').select(['id', 'owner', 'lease_expires_at']).where('state', '=', 'running').where('owner', 'is not', null).where('lease_expires_at', 'is not', null).orderBy('seq').execute();
    return rows.map((r) => ({ taskId: r.id, owner: r.owner as string, expiresAt: r.lease_expires_at as number }));
  }

  async requestCancel(taskId: string): Promise<boolean> {
    const result = await this.db.updateTable('tasks').set({ cancel_requested_at: this.clock() }).where('id', '=', taskId).where('state', '=', 'running').executeTakeFirst();
    return Number(result.numUpdatedRows) > 0;
  }

  async cancelRequested(owner: string): Promise<string[]> {
    const rows = await this.db.selectFrom('tasks').select('id').where('owner', '=', owner).where('state', '=', 'running').where('cancel_requested_at', 'is not', null).orderBy('seq').execute();
    return rows.map((r) => r.id);
  }

  async claimExpiredTasks(owner: string, ttlMs: number, limit = 100): Promise<TaskRecord[]> {
    const { now, expiresAt } = expiryAfter(this.clock, ttlMs);
    const expired = this.dialect.lockRows(
      this.db
        .selectFrom('tasks')
        .select('id')
        .where('state', '=', 'running')
        .where((eb) => eb.or([eb('lease_expires_at', 'is', null), eb('lease_expires_at', '<=', now)]))
        .orderBy('seq')
        .limit(limit),
      'skip-locked',
    );
    const rows = await this.db.updateTable('tasks').set({ owner, lease_expires_at: expiresAt }).where('id', 'in', expired).returningAll().execute();
    return rows.sort((a, b) => a.seq - b.seq).map(taskFromRow);
  }
}
