// Errors of the inventory itself (not of the records in it): the database is
// unreachable, its schema does not match this controller's code, a migration
// failed, a stored row is unreadable, an import does not fit.
import { OffshootError } from '../common/index.ts';

/** The database cannot be reached (down, restarting, connection lost). HTTP 503; retry later. */
export class InventoryUnavailableError extends OffshootError {
  constructor(dialect: string, reason: string, options?: { cause?: unknown }) {
    super('INVENTORY_UNAVAILABLE', `the inventory database (${dialect}) is unavailable: ${reason}`, { dialect, reason }, 503, options);
  }
}

/** The database's schema is older or newer than this controller's code expects. */
export class InventorySchemaMismatchError extends OffshootError {
  constructor(message: string, details: { databaseVersion: number; databaseMigration: string | null; codeVersion: number; codeMigration: string } & Record<string, unknown>) {
    super('INVENTORY_SCHEMA_MISMATCH', message, details, 500);
  }
}

export class InventoryMigrationError extends OffshootError {
  constructor(location: string, migration: string | undefined, cause: unknown) {
    super('INVENTORY_MIGRATION_FAILED', `cannot migrate the inventory at ${location}: ${(cause as Error).message}`, { location, migration }, 500, { cause });
  }
}

export class InventoryCorruptError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('INVENTORY_CORRUPT', message, details, 500);
  }
}

/** An import that cannot go into this inventory (not empty, other schema, not an export). HTTP 409. */
export class InventoryImportError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('INVENTORY_IMPORT_REFUSED', message, details, 409);
  }
}
