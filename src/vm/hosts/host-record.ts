// Hosts as the control plane records them: each host runs an agent the
// controller reaches through the protocol (the controller's own host in
// process, url "local:"; others over HTTP with a per-host credential). A host
// is `ready` while it answers its heartbeat within its lease, `unreachable`
// once it missed it (its VMs are then `unknown`, never restarted elsewhere),
// `draining` while its VMs are moved off and new ones are not placed there,
// and `maintenance` when an operator took it out of placement. Its epoch grows
// each time it is added or comes back, and every request to its agent carries
// it, so orders from before cannot reach it.
import { IllegalStateError } from '../../common/index.ts';

export const HOST_STATES = ['ready', 'unreachable', 'draining', 'maintenance'] as const;
export type HostState = (typeof HOST_STATES)[number];

export function isHostState(value: string): value is HostState {
  return (HOST_STATES as readonly string[]).includes(value);
}

/** The url of the controller's own, in-process agent. */
export const LOCAL_HOST_URL = 'local:';

export interface HostFacts {
  hostname: string;
  accel: 'kvm' | 'tcg';
  accelReason: string;
  qemuVersion: string;
  agentVersion: string;
  agentInstance: string;
  memory: { totalBytes: number; freeBytes: number; templatesBytes: number };
  confinement: { user: string | null; sandbox: boolean; reason: string | null };
}

export interface HostRecord {
  id: string;
  name: string;
  url: string;
  state: HostState;
  stateReason: string | null;
  epoch: number;
  /** The agent's credential (null for the in-process agent). */
  token: string | null;
  protocolVersion: number;
  capabilities: string[];
  facts: HostFacts | null;
  lastSeenAt: string | null;
  leaseExpiresAt: string | null;
  createdAt: string;
  updatedAt: string;
}

/** Persistence of hosts; src/store implements it. */
export interface HostInventory {
  insertHost(host: HostRecord): Promise<void>;
  updateHost(id: string, patch: Partial<Omit<HostRecord, 'id' | 'createdAt'>>): Promise<HostRecord>;
  deleteHost(id: string): Promise<void>;
  getHost(id: string): Promise<HostRecord | undefined>;
  findHostByName(name: string): Promise<HostRecord | undefined>;
  listHosts(): Promise<HostRecord[]>;
}

/** Which states a host may be in for an operation: placement needs `ready`; reaching its VMs anything but unreachable. */
export const PLACEABLE: readonly HostState[] = ['ready'];

export function assertHostState(host: HostRecord, allowed: readonly HostState[], operation: string): void {
  if (!allowed.includes(host.state)) throw new IllegalStateError(`host "${host.name}"`, host.state, allowed, operation);
}
