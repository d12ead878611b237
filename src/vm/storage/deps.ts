// What the storage operations need from the rest of the VM layer: both
// inventories, the engine (its fleet of hosts, state keeper, tasks, events
// and garbage-collection pins), and a logger. Every file operation goes to the
// agent of the host that holds the file, through the protocol.
import type { Logger } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import type { VmEngine } from '../engine.ts';
import type { Inventory } from '../records.ts';
import type { DatastoreRecord, StorageInventory } from './records.ts';

export interface StorageDeps {
  inventory: Inventory;
  storageInventory: StorageInventory;
  engine: VmEngine;
  logger: Logger;
  /** Copy worker settings (chunk size; a bandwidth limit, e.g. to leave I/O to running VMs). */
  copy?: { chunkMiB?: number; maxMiBPerSecond?: number };
  /** Fault injection for tests (see src/api/test-faults.ts). */
  faults?: (point: string) => Promise<void> | void;
}

/** The agent of a host. */
export function agentOn(deps: StorageDeps, hostId: string): AgentClient {
  return deps.engine.fleet.agent(hostId);
}

/** A host that sees the datastore and answers (the first such host), for work on its files. */
export function datastoreHost(deps: StorageDeps, ds: DatastoreRecord, prefer?: string): string {
  const states = new Map(deps.engine.fleet.hosts().map((h) => [h.id, h.state]));
  const usable = ds.hosts.filter((h) => states.get(h.hostId) !== undefined && states.get(h.hostId) !== 'unreachable');
  const pick = usable.find((h) => h.hostId === prefer) ?? usable[0] ?? ds.hosts[0];
  if (!pick) throw new Error(`datastore ${ds.name} has no host`);
  return pick.hostId;
}
