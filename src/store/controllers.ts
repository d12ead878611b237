// Controllers of the inventory (table controllers): every `offshoot serve`
// registers its id with a lease and renews it by heartbeat. A controller whose
// lease expired is dead to the others: reapExpired removes its row and the
// GC pins it owned (its VM claims and task leases expire on their own, and
// its tasks are taken over with claimExpiredTasks, which adopts nothing by
// itself: adopt a task's pins before reaping its old owner). A reaped
// controller that was only slow learns it at its next heartbeat (LEASE_LOST).
// keepAlive registers a controller and heartbeats three times per lease.
import type { Kysely, Selectable } from 'kysely';
import type { Logger } from '../common/index.ts';
import type { ControllerRecord, Controllers } from '../vm/index.ts';
import { LeaseLostError } from '../vm/index.ts';
import { expiryAfter } from './clock.ts';
import type { Clock } from './clock.ts';
import type { StoreDialect } from './dialect.ts';
import type { ControllersTable, Database } from './schema.ts';

function controllerFromRow(row: Selectable<ControllersTable>): ControllerRecord {
  return { id: row.id, url: row.url, startedAt: row.started_at, heartbeatAt: row.heartbeat_at, leaseExpiresAt: row.lease_expires_at };
}

export class KyselyControllers implements Controllers {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
    private readonly clock: Clock,
  ) {}

  async register(id: string, url: string | null, ttlMs: number): Promise<ControllerRecord> {
    const { now, expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = { id, url, started_at: new Date(now).toISOString(), heartbeat_at: now, lease_expires_at: expiresAt };
    const saved = await this.db
      .insertInto('controllers')
      .values(row)
      .onConflict((oc) => oc.column('id').doUpdateSet({ url, started_at: row.started_at, heartbeat_at: now, lease_expires_at: expiresAt }))
      .returningAll()
      .executeTakeFirstOrThrow();
    return controllerFromRow(saved);
  }

  async heartbeat(id: string, ttlMs: number): Promise<ControllerRecord> {
    const { now, expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = await this.db.updateTable('controllers').set({ heartbeat_at: now, lease_expires_at: expiresAt }).where('id', '=', id).returningAll().executeTakeFirst();
    if (!row) throw new LeaseLostError('controller lease', id, id, null);
    return controllerFromRow(row);
  }

  async deregister(id: string): Promise<void> {
    await this.db.deleteFrom('controllers').where('id', '=', id).execute();
  }

  async list(): Promise<ControllerRecord[]> {
    return (await this.db.selectFrom('controllers').selectAll().orderBy(this.dialect.byBytes('id')).execute()).map(controllerFromRow);
  }

  async live(): Promise<ControllerRecord[]> {
    return (await this.db.selectFrom('controllers').selectAll().where('lease_expires_at', '>', this.clock()).orderBy(this.dialect.byBytes('id')).execute()).map(controllerFromRow);
  }

  async reapExpired(): Promise<string[]> {
    const now = this.clock();
    return this.db.transaction().execute(async (trx) => {
      const dead = (await trx.deleteFrom('controllers').where('lease_expires_at', '<=', now).returning('id').execute()).map((r) => r.id);
      if (dead.length > 0) await trx.deleteFrom('gc_pins').where('owner', 'in', dead).execute();
      return dead.sort();
    });
  }

  /**
   * Registers the controller and renews its lease every third of it until stopped (which deregisters it).
   * If it was reaped meanwhile (it could not reach the database for a lease), `onLost` is told (its pins are
   * gone and its tasks may have been taken over) and it registers again. Never throws: a database that
   * is down at start only delays the registration to the next beat.
   */
  async keepAlive(id: string, url: string | null, ttlMs: number, options: { logger?: Logger; onLost?: () => void } = {}): Promise<{ stop(): Promise<void> }> {
    const { logger, onLost } = options;
    let registered = await this.register(id, url, ttlMs).then(
      () => true,
      (err: unknown) => {
        logger?.warn({ err, controller: id }, 'cannot register the controller yet');
        return false;
      },
    );
    let beating: Promise<unknown> = Promise.resolve();
    const timer = setInterval(() => {
      beating = this.heartbeat(id, ttlMs).catch(async (err: unknown) => {
        logger?.warn({ err, controller: id }, 'controller heartbeat failed');
        if ((err as { code?: string }).code === 'LEASE_LOST') {
          if (registered) onLost?.();
          registered = await this.register(id, url, ttlMs).then(
            () => true,
            () => false,
          );
        }
      });
    }, Math.max(1, Math.floor(ttlMs / 3)));
    timer.unref();
    return {
      stop: async () => {
        clearInterval(timer);
        await beating;
        await this.deregister(id).catch((err: unknown) => logger?.warn({ err, controller: id }, 'cannot deregister the controller'));
      },
    };
  }
}
