// What the engine's parts share: the inventory, the fleet (a protocol client
// per host), the state keeper, tasks and events, the coordinator (this
// controller among the fleet's), the pins that keep what an operation in
// flight made away from garbage collection, and test faults.
import type { Logger } from '../common/index.ts';
import type { AgentClient } from '../protocol/index.ts';
import type { GcPins } from './coordination.ts';
import type { Coordinator } from './coordinator.ts';
import type { EventBus } from './events.ts';
import type { Fleet } from './hosts/index.ts';
import type { PinSet } from './pin-set.ts';
import type { Inventory, VmRecord } from './records.ts';
import type { StateKeeper } from './state-keeper.ts';
import type { TaskRunner } from './tasks.ts';

export interface EngineContext {
  inventory: Inventory;
  fleet: Fleet;
  states: StateKeeper;
  events: EventBus;
  tasks: TaskRunner;
  logger: Logger;
  /** Templates and bases (by reference) that a request in flight made but no record names yet (this controller's). */
  pins: PinSet;
  /** The inventory's GC pins, by holder (`task:ID` for what a task made: they go when the task ends). */
  gcPins: GcPins;
  coordinator: Coordinator;
  bootTimeoutMs: number;
  /** Fault injection for tests: called at named points; throwing there fails the operation at that step. */
  faults?: (point: string) => Promise<void> | void;
  /** The protocol client of the VM's host. */
  agentOf(vm: Pick<VmRecord, 'hostId'>): AgentClient;
  /** Removes templates and bases nothing uses any more, on one host or every reachable one. */
  collectGarbage(hostId?: string): Promise<{ templates: string[]; files: string[] }>;
  /** Runs `fn` with garbage collection held off (a freeze makes bases and a template no record names yet). */
  holdGarbage<T>(fn: () => Promise<T>): Promise<T>;
  /** The recorded content ids of datastore disks among these files (absent: the agents hash what they hold). */
  contentIdsOf?: (files: string[]) => Promise<Record<string, string>>;
}
