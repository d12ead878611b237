// Public surface of the store layer: the SQLite inventory (VMs, tasks,
// checkpoints, and through `storage` datastores, disks, copy jobs and pools).
export { SqliteInventory, InventoryCorruptError } from './sqlite-inventory.ts';
export { SqliteStorageInventory } from './storage-inventory.ts';
