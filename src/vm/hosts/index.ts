// Hosts: the records of the hosts a control plane drives, and the Fleet that
// reaches their agents, keeps their leases and places VMs on them.
export * from './host-record.ts';
export { Fleet, AgentProtocolError } from './fleet.ts';
export type { FleetListener, FleetOptions, HostView } from './fleet.ts';
export { addHostRequestSchema } from './host-requests.ts';
export type { AddHostRequest } from './host-requests.ts';
