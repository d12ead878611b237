// The inventory schema's version check, before anything else touches the
// database. The version is the number of migrations run (migrations.ts).
// - The database is newer than this code (it ran migrations this code does
//   not know): refuse to start, INVENTORY_SCHEMA_MISMATCH naming both versions.
// - The database is older: migrate it, unless the policy says not to or
//   (policy 'unless-live', a fleet's default) other controllers are alive on
//   it, since they run the older code: then refuse the same way. Stop the
//   fleet and start the new version (or run `offshoot inventory migrate`).
// Kysely's Migrator takes a lock for the migration itself, so two controllers
// starting together on a fresh database migrate it once.
import { Migrator, sql } from 'kysely';
import type { Kysely } from 'kysely';
import { InventoryMigrationError, InventorySchemaMismatchError } from './errors.ts';
import type { StoreDialect } from './dialect.ts';
import { migrationNames, migrationProvider } from './migrations.ts';
import type { Database } from './schema.ts';

/** 'always': migrate an older database (SQLite, one controller); 'unless-live': only when no other controller's lease is live; 'never': refuse. */
export type MigratePolicy = 'always' | 'unless-live' | 'never';

export interface SchemaVersion {
  /** Migrations the database ran. */
  database: number;
  databaseMigration: string | null;
  /** Migrations this code knows. */
  code: number;
  codeMigration: string;
}

async function tableNames(db: Kysely<Database>): Promise<Set<string>> {
  return new Set((await db.introspection.getTables({ withInternalKyselyTables: true })).map((t) => t.name));
}

/** Reads the database's schema version without changing anything. */
export async function readSchemaVersion(db: Kysely<Database>, dialect: StoreDialect): Promise<SchemaVersion & { unknown: string[] }> {
  const known = migrationNames(dialect);
  const executed = (await tableNames(db)).has('kysely_migration')
    ? (await sql<{ name: string }>`select name from kysely_migration order by name`.execute(db)).rows.map((r) => r.name)
    : [];
  return {
    database: executed.length,
    databaseMigration: executed[executed.length - 1] ?? null,
    code: known.length,
    codeMigration: known[known.length - 1] as string,
    unknown: executed.filter((name) => !known.includes(name)),
  };
}

function describe(version: number, migration: string | null): string {
  return `version ${version}${migration ? ` (${migration})` : ''}`;
}

/** Brings the schema to this code's version or refuses; returns the version it ends at. */
export async function prepareSchema(db: Kysely<Database>, dialect: StoreDialect, where: string, policy: MigratePolicy, now: number): Promise<SchemaVersion> {
  const v = await readSchemaVersion(db, dialect);
  const details = { databaseVersion: v.database, databaseMigration: v.databaseMigration, codeVersion: v.code, codeMigration: v.codeMigration, location: where };
  if (v.unknown.length > 0 || v.database > v.code) {
    throw new InventorySchemaMismatchError(`the inventory at ${where} has schema ${describe(v.database, v.databaseMigration)}, newer than this controller's ${describe(v.code, v.codeMigration)}: run the newer Offshoot`, { ...details, unknownMigrations: v.unknown });
  }
  if (v.database === v.code) return v;
  if (policy === 'never') {
    throw new InventorySchemaMismatchError(`the inventory at ${where} has schema ${describe(v.database, v.databaseMigration)}, older than this controller's ${describe(v.code, v.codeMigration)}: run \`offshoot inventory migrate\``, details);
  }
  if (policy === 'unless-live' && (await tableNames(db)).has('controllers')) {
    const live = await db.selectFrom('controllers').select('id').where('lease_expires_at', '>', now).execute();
    if (live.length > 0) {
      throw new InventorySchemaMismatchError(
        `the inventory at ${where} has schema ${describe(v.database, v.databaseMigration)}, older than this controller's ${describe(v.code, v.codeMigration)}, and ${live.length} controller(s) still run on it (${live.map((c) => c.id).join(', ')}): stop them first, then start this version`,
        { ...details, liveControllers: live.map((c) => c.id) },
      );
    }
  }
  const { error, results } = await new Migrator({ db, provider: migrationProvider(dialect) }).migrateToLatest();
  if (error) throw new InventoryMigrationError(where, results?.find((r) => r.status === 'Error')?.migrationName, error);
  return { ...v, database: v.code, databaseMigration: v.codeMigration };
}
