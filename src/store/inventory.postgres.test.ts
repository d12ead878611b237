// The inventory contract on PostgreSQL: a fresh database per test on the
// run's temporary cluster (tests/postgres-global-setup.ts). Fails, never
// skips, when that cluster did not start. Plus what only a fleet does:
// controllers starting together on a new database.
import { sql } from 'kysely';
import { describe, expect, it } from 'vitest';
import { inventoryContract } from './inventory-contract.ts';
import { KyselyInventory } from './inventory.ts';
import { migrationNames } from './migrations.ts';
import { freshTestDatabase } from './pg-test-cluster.ts';

inventoryContract('PostgreSQL', { freshLocation: () => freshTestDatabase('offshoot_contract') });

describe('PostgreSQL fleet start', () => {
  it('migrates a new database once when three controllers open it at the same time', async () => {
    const url = await freshTestDatabase('offshoot_together');
    const inventories = await Promise.all([1, 2, 3].map(() => KyselyInventory.open(url)));
    try {
      const names = migrationNames(inventories[0]!.dialect);
      for (const inv of inventories) expect(inv.schema.database).toBe(names.length);
      const ran = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(inventories[0]!.kysely);
      expect(ran.rows.map((r) => r.name)).toEqual(names);
    } finally {
      for (const inv of inventories) await inv.close();
    }
  });
});
