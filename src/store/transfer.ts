// Export and import of a whole inventory as one JSON document, so a fleet can
// start from an existing SQLite home (`offshoot inventory export|import`) with
// nothing lost: every durable table, row by row with its stored values (task
// order, VM versions, token hashes included). Not exported: what only lives
// while controllers do (controllers, VM claims, large-event payloads).
// Import goes into an empty inventory of the same schema version, in one
// transaction; on PostgreSQL the tasks' sequence is moved past the imported
// rows. Rows are checked against the target's columns first, so a file that
// is not an export is refused before anything is written.
import type { Kysely } from 'kysely';
import { sql } from 'kysely';
import { InventoryImportError } from './errors.ts';
import type { KyselyInventory } from './inventory.ts';
import { TABLES } from './schema.ts';

export const EXPORT_FORMAT = 'offshoot-inventory';

type Table = (typeof TABLES)[number];
/** Tables whose rows only mean something while their controllers live. */
export const TRANSIENT_TABLES = ['controllers', 'vm_claims', 'event_payloads', 'migration_queue'] as const satisfies readonly Table[];
export const EXPORTED_TABLES = ['vms', 'tasks', 'checkpoints', 'datastores', 'disks', 'copy_jobs', 'pools', 'gc_pins', 'api_tokens', 'hosts', 'fabric_templates', 'fabric_members', 'migration_policies'] as const satisfies readonly Table[];
type ExportedTable = (typeof EXPORTED_TABLES)[number];

/** Each exported table's key, for a stable row order. */
const ORDER: Record<ExportedTable, string[]> = {
  vms: ['id'],
  tasks: ['seq'],
  checkpoints: ['id'],
  datastores: ['name'],
  disks: ['id'],
  copy_jobs: ['id'],
  pools: ['id'],
  gc_pins: ['holder', 'path'],
  api_tokens: ['id'],
  hosts: ['id'],
  fabric_templates: ['id'],
  fabric_members: ['vm_id'],
  migration_policies: ['scope'],
};

type Row = Record<string, string | number | null>;

export interface InventoryExport {
  format: typeof EXPORT_FORMAT;
  schema: { version: number; migration: string };
  source: { dialect: string; location: string };
  exportedAt: string;
  tables: Record<string, Row[]>;
}

export async function exportInventory(inventory: KyselyInventory): Promise<InventoryExport> {
  const db = inventory.kysely as unknown as Kysely<Record<string, Row>>;
  const tables: Record<string, Row[]> = {};
  // One transaction: a consistent snapshot even while a controller writes.
  await db.transaction().execute(async (trx) => {
    for (const table of EXPORTED_TABLES) {
      let query = trx.selectFrom(table).selectAll();
      for (const column of ORDER[table]) query = query.orderBy(column === 'seq' ? sql.ref(column) : inventory.dialect.byBytes(column));
      tables[table] = (await query.execute()) as Row[];
    }
  });
  return { format: EXPORT_FORMAT, schema: { version: inventory.schema.code, migration: inventory.schema.codeMigration }, source: { dialect: inventory.dialectName, location: inventory.location }, exportedAt: new Date().toISOString(), tables };
}

function checkShape(data: unknown): asserts data is InventoryExport {
  const d = data as Partial<InventoryExport> | null;
  if (!d || typeof d !== 'object' || d.format !== EXPORT_FORMAT || typeof d.tables !== 'object' || d.tables === null || typeof d.schema?.version !== 'number') {
    throw new InventoryImportError(`not an Offshoot inventory export (format "${EXPORT_FORMAT}")`, { format: d?.format ?? null });
  }
  for (const [table, rows] of Object.entries(d.tables)) {
    if (!(EXPORTED_TABLES as readonly string[]).includes(table)) throw new InventoryImportError(`the export has an unknown table ${table}`, { table });
    if (!Array.isArray(rows)) throw new InventoryImportError(`table ${table} of the export is not a list of rows`, { table });
  }
}

/** Imports an export into this (empty) inventory; returns the rows imported per table. */
export async function importInventory(inventory: KyselyInventory, data: unknown): Promise<Record<string, number>> {
  checkShape(data);
  if (data.schema.version !== inventory.schema.code) {
    throw new InventoryImportError(`the export has schema version ${data.schema.version} (${data.schema.migration}), this inventory ${inventory.schema.code} (${inventory.schema.codeMigration}): export and import with the same Offshoot`, { exportVersion: data.schema.version, inventoryVersion: inventory.schema.code });
  }
  const db = inventory.kysely as unknown as Kysely<Record<string, Row>>;
  const columns = new Map((await inventory.kysely.introspection.getTables()).map((t) => [t.name, new Set(t.columns.map((c) => c.name))]));
  for (const [table, rows] of Object.entries(data.tables)) {
    const known = columns.get(table);
    for (const row of rows) {
      const bad = Object.keys(row ?? {}).find((c) => !known?.has(c));
      if (typeof row !== 'object' || row === null || bad) throw new InventoryImportError(`a row of table ${table} has an unknown column ${bad ?? '(not an object)'}`, { table, column: bad ?? null });
    }
  }
  const counts: Record<string, number> = {};
  await db.transaction().execute(async (trx) => {
    for (const table of EXPORTED_TABLES) {
      const { n } = (await trx.selectFrom(table).select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirstOrThrow()) as unknown as { n: number };
      if (Number(n) > 0) throw new InventoryImportError(`the target inventory is not empty (table ${table} has ${n} rows): import into a new database`, { table, rows: Number(n) });
    }
    for (const table of EXPORTED_TABLES) {
      const rows = data.tables[table] ?? [];
      for (let i = 0; i < rows.length; i += 200) await trx.insertInto(table).values(rows.slice(i, i + 200)).execute();
      counts[table] = rows.length;
    }
    if (inventory.dialectName === 'postgres') {
      await sql`select setval(pg_get_serial_sequence('tasks', 'seq'), coalesce((select max(seq) from tasks), 0) + 1, false)`.execute(trx);
    }
  });
  return counts;
}
