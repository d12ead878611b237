// Public surface of the host-agent layer: the HostAgent interface, its plain
// data types, and the in-process implementation.
export type { HostAgent } from './host-agent.ts';
export type * from './types.ts';
export { LocalHostAgent, VmNotRunningError, GuestAgentUnavailableError } from './local-agent.ts';
export type { LocalHostAgentOptions } from './local-agent.ts';
export { HostLayout } from './layout.ts';
export { newMac } from './prepare-vm.ts';
