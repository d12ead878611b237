// Public surface of the store layer: the SQLite inventory.
export { SqliteInventory, InventoryCorruptError } from './sqlite-inventory.ts';
