// Garbage-collection pins (table gc_pins): files that garbage collection must
// keep, one row per (holder, path). The holder names what needs the file (a
// pool, a copy job, a task); a path stays pinned while any holder pins it, so
// one holder letting go never unpins another's file. The owner is the
// controller whose death ends the pin (null: the pin outlives controllers,
// like a pool's). When a controller's lease expires, Controllers.reapExpired
// removes the pins it owned; a controller taking over a task first adopts the
// task's pins, so the reaping does not drop files the task still needs.
import type { Kysely } from 'kysely';
import type { GcPin, GcPins } from '../vm/index.ts';
import type { StoreDialect } from './dialect.ts';
import type { Database } from './schema.ts';

export class KyselyGcPins implements GcPins {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async add(holder: string, paths: readonly string[], owner: string | null): Promise<void> {
    if (paths.length === 0) return;
    const createdAt = new Date().toISOString();
    const rows = [...new Set(paths)].map((path) => ({ path, holder, owner, created_at: createdAt }));
    await this.db
      .insertInto('gc_pins')
      .values(rows)
      .onConflict((oc) => oc.columns(['holder', 'path']).doUpdateSet({ owner }))
      .execute();
  }

  async remove(holder: string, paths?: readonly string[]): Promise<void> {
    let query = this.db.deleteFrom('gc_pins').where('holder', '=', holder);
    if (paths) {
      if (paths.length === 0) return;
      query = query.where('path', 'in', [...paths]);
    }
    await query.execute();
  }

  async paths(): Promise<Set<string>> {
    return new Set((await this.db.selectFrom('gc_pins').select('path').distinct().execute()).map((r) => r.path));
  }

  async list(filter: { holder?: string; owner?: string } = {}): Promise<GcPin[]> {
    let query = this.db.selectFrom('gc_pins').selectAll().orderBy(this.dialect.byBytes('holder')).orderBy(this.dialect.byBytes('path'));
    if (filter.holder !== undefined) query = query.where('holder', '=', filter.holder);
    if (filter.owner !== undefined) query = query.where('owner', '=', filter.owner);
    return (await query.execute()).map((r) => ({ path: r.path, holder: r.holder, owner: r.owner, createdAt: r.created_at }));
  }

  async adopt(holder: string, owner: string | null): Promise<number> {
    const result = await this.db.updateTable('gc_pins').set({ owner }).where('holder', '=', holder).executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  async removeOwnedBy(owner: string): Promise<number> {
    const result = await this.db.deleteFrom('gc_pins').where('owner', '=', owner).executeTakeFirst();
    return Number(result.numDeletedRows);
  }
}
