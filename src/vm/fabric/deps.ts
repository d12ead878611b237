// What the fabric needs from the rest of the VM layer: the VM inventory and
// its own, the engine (fleet, state keeper, tasks, events, garbage
// collection), and optionally the fleet's per-object claims, so that one
// controller at a time refills a pool.
import type { Logger } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import type { VmClaims } from '../coordination.ts';
import type { VmEngine } from '../engine.ts';
import type { Inventory } from '../records.ts';
import type { FabricInventory } from './records.ts';

export interface FabricDeps {
  inventory: Inventory;
  fabric: FabricInventory;
  engine: VmEngine;
  logger: Logger;
  /** The inventory's claims (across controllers): a pool refill holds `fabric-pool:<template>:<host>` while it runs. */
  claims?: VmClaims;
  /** This controller's id (the owner of its claims). */
  controllerId?: string;
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
