// Live migration policies and the queue of migrations waiting for a host's
// slot (tables migration_policies and migration_queue, issue 12), on SQLite
// and PostgreSQL through the same code. A policy is a JSON document per scope
// (`fleet` or a host id); writing an empty one deletes the row. The queue is
// ordered by its serial key; an entry counts only while its task runs, so
// reading the queue also removes the entries of ended tasks (a controller
// that died before taking its entry out).
import type { Kysely } from 'kysely';
import type { MigrationControlStore, MigrationPolicy, MigrationQueueEntry, SlotNeeds } from '../vm/index.ts';
import { cleanPolicy } from '../vm/index.ts';
import type { Database } from './schema.ts';

export class KyselyMigrationControl implements MigrationControlStore {
  constructor(private readonly db: Kysely<Database>) {}

  async getPolicy(scope: string): Promise<{ policy: MigrationPolicy; updatedAt: string } | undefined> {
    const row = await this.db.selectFrom('migration_policies').selectAll().where('scope', '=', scope).executeTakeFirst();
    return row && { policy: cleanPolicy(JSON.parse(row.doc)), updatedAt: row.updated_at };
  }

  async listPolicies(): Promise<Array<{ scope: string; policy: MigrationPolicy; updatedAt: string }>> {
    const rows = await this.db.selectFrom('migration_policies').selectAll().orderBy('scope').execute();
    return rows.map((r) => ({ scope: r.scope, policy: cleanPolicy(JSON.parse(r.doc)), updatedAt: r.updated_at }));
  }

  async putPolicy(scope: string, policy: MigrationPolicy): Promise<void> {
    if (Object.keys(policy).length === 0) {
      await this.deletePolicy(scope);
      return;
    }
    const row = { scope, doc: JSON.stringify(policy), updated_at: new Date().toISOString() };
    await this.db
      .insertInto('migration_policies')
      .values(row)
      .onConflict((oc) => oc.column('scope').doUpdateSet({ doc: row.doc, updated_at: row.updated_at }))
      .execute();
  }

  async deletePolicy(scope: string): Promise<boolean> {
    const result = await this.db.deleteFrom('migration_policies').where('scope', '=', scope).executeTakeFirst();
    return Number(result.numDeletedRows) > 0;
  }

  async enqueue(taskId: string, owner: string, needs: SlotNeeds): Promise<MigrationQueueEntry> {
    const row = await this.db.insertInto('migration_queue').values({ task_id: taskId, owner, needs: JSON.stringify(needs), enqueued_at: new Date().toISOString() }).returningAll().executeTakeFirstOrThrow();
    return { seq: Number(row.seq), taskId: row.task_id, owner: row.owner, needs: JSON.parse(row.needs) as SlotNeeds, enqueuedAt: row.enqueued_at };
  }

  async queued(): Promise<MigrationQueueEntry[]> {
    const rows = await this.db
      .selectFrom('migration_queue')
      .leftJoin('tasks', 'tasks.id', 'migration_queue.task_id')
      .select(['migration_queue.seq', 'migration_queue.task_id', 'migration_queue.owner', 'migration_queue.needs', 'migration_queue.enqueued_at', 'tasks.state'])
      .orderBy('migration_queue.seq')
      .execute();
    const stale = rows.filter((r) => r.state !== 'running').map((r) => r.task_id);
    if (stale.length > 0) await this.db.deleteFrom('migration_queue').where('task_id', 'in', stale).execute();
    return rows.filter((r) => r.state === 'running').map((r) => ({ seq: Number(r.seq), taskId: r.task_id, owner: r.owner, needs: JSON.parse(r.needs) as SlotNeeds, enqueuedAt: r.enqueued_at }));
  }

  async dequeue(taskId: string): Promise<void> {
    await this.db.deleteFrom('migration_queue').where('task_id', '=', taskId).execute();
  }
}
