// Phase `path` of a migration: the isolated network path made for this one
// operation (a VXLAN link pair with its own VNI and /31 addresses, planned by
// net/path-plan.ts) and its one-time TLS-PSK key, which goes to the two agents
// once and nowhere else (not the journal, not the log). closeDataPath removes
// both ends (idempotent: after success, failure, cancel, or in recovery).
import type { AgentClient, LinkCountersData } from '../../protocol/index.ts';
import { newPskKey, planDataPath } from '../../net/index.ts';

export interface OpenedPath {
  operationId: string;
  /** The path's slot (a group opens its paths one after another, each avoiding the slots taken before). */
  slot: number;
  linkName: string;
  vni: number;
  mtu: number;
  sourceAddress: string;
  destinationAddress: string;
}

export async function openDataPath(agents: { source: AgentClient; destination: AgentClient }, pathId: string, addresses: { source: string; destination: string }, slotsInUse: number[]): Promise<OpenedPath> {
  const plan = planDataPath({ operationId: pathId, serverManagementAddress: addresses.destination, clientManagementAddress: addresses.source, inUse: slotsInUse });
  const key = newPskKey();
  // The two ends do not depend on each other: both at once (a failure leaves the other end to closeDataPath, as any failure does).
  const [server, client] = await Promise.all([agents.destination.openPath({ plan, role: 'server', pskKey: key }), agents.source.openPath({ plan, role: 'client', pskKey: key })]);
  return { operationId: pathId, slot: plan.slot, linkName: plan.linkName, vni: plan.vni, mtu: Math.min(server.mtu, client.mtu), sourceAddress: client.localAddress, destinationAddress: server.localAddress };
}

/** Removes both ends; answers the source's last link counters (null if it had none). Never throws. */
export async function closeDataPath(agents: { source: AgentClient; destination: AgentClient }, pathId: string): Promise<LinkCountersData | null> {
  const [s] = await Promise.all([agents.source.closePath({ operationId: pathId }).catch(() => null), agents.destination.closePath({ operationId: pathId }).catch(() => null)]);
  return s?.counters ?? null;
}
