// What the fabric needs from the rest of the VM layer: the VM inventory and
// its own, and the engine (fleet, state keeper, tasks, events, garbage
// collection, and its coordinator: the claims that let one controller at a
// time work on a pool, and the GC pins that keep a template's files), and the
// copy jobs that carry a template's files to another host (place.ts).
import type { Logger } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import type { VmEngine } from '../engine.ts';
import type { CopyJobs } from '../storage/index.ts';
import type { Inventory } from '../records.ts';
import type { FabricInventory } from './records.ts';

export interface FabricDeps {
  inventory: Inventory;
  fabric: FabricInventory;
  engine: VmEngine;
  logger: Logger;
  /** The storage service's copy jobs (a placement's files travel as jobs of purpose `place`); without them a placement is refused. */
  jobs?: CopyJobs;
  /** Fault injection for tests (see src/api/test-faults.ts). */
  faults?: (point: string) => Promise<void> | void;
  /** How long the guest agent of a new child may take to answer (its readiness check). */
  readyTimeoutMs?: number;
  /** How often pools are checked against their settings and their children against their VMs. */
  reconcileMs?: number;
}

export function agentOn(deps: FabricDeps, hostId: string): AgentClient {
  return deps.engine.fleet.agent(hostId);
}
