// Public surface of the store layer: the inventory over SQLite (default) or
// PostgreSQL (a fleet): VMs, tasks, checkpoints, storage records, and the
// fleet's coordination (claims, pins, task leases, controllers, events,
// API tokens, hosts); schema checks; export and import.
export { KyselyInventory } from './inventory.ts';
export type { InventoryEventBus, OpenInventoryOptions } from './inventory.ts';
export { KyselyStorageInventory } from './storage-inventory.ts';
export { InventoryCorruptError, InventoryImportError, InventoryMigrationError, InventorySchemaMismatchError, InventoryUnavailableError } from './errors.ts';
export { connect, inventoryLocation, parseDatabaseLocation } from './connect.ts';
export type { DialectName } from './dialect.ts';
export { readSchemaVersion } from './schema-version.ts';
export type { MigratePolicy, SchemaVersion } from './schema-version.ts';
export type { Clock } from './clock.ts';
export type { ApiTokenRecord } from './tokens.ts';
export { tokenHash } from './tokens.ts';
export { NOTIFY_LIMIT } from './event-bus.ts';
/** The SQLite inventory of one machine is the same class (open it with a file path). */
export { KyselyInventory as SqliteInventory } from './inventory.ts';
export { exportInventory, importInventory, EXPORT_FORMAT } from './transfer.ts';
export type { InventoryExport } from './transfer.ts';
