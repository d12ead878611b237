// What the storage operations need from the rest of the VM layer and below:
// both inventories, both agents, the engine (its state keeper, tasks, events
// and garbage-collection pins), and a logger.
import type { Logger } from '../../common/index.ts';
import type { HostAgent, StorageAgent } from '../../agent/index.ts';
import type { VmEngine } from '../engine.ts';
import type { Inventory } from '../records.ts';
import type { StorageInventory } from './records.ts';

export interface StorageDeps {
  inventory: Inventory;
  storageInventory: StorageInventory;
  agent: HostAgent;
  storage: StorageAgent;
  engine: VmEngine;
  logger: Logger;
  /** The host's VM folders (a clone's delta lives in <vmsDir>/<id>). */
  vmsDir: string;
  /** Copy worker settings (chunk size; a bandwidth limit, e.g. to leave I/O to running VMs). */
  copy?: { chunkMiB?: number; maxMiBPerSecond?: number };
  /** Fault injection for tests (see src/api/test-faults.ts). */
  faults?: (point: string) => Promise<void> | void;
}
