// Public surface of the agent layer: what runs on a host. The AgentService
// serves the whole agent protocol (src/protocol) from the local agents
// (LocalHostAgent: QEMU, memory, fork, checkpoints; LocalStorageAgent: disk
// files and block jobs), in process or over HTTP (agent-process.ts:
// `offshoot agent serve`). The agent alone decides which host files may be
// used (path-policy.ts) and how QEMU is confined and shares files with it
// (confinement.ts, qemu-access.ts). Nothing but the protocol leaves this layer: the
// control plane (src/vm) never imports it.
export { AgentService, AGENT_VERSION } from './agent-service.ts';
export { LocalHostAgent, VmNotRunningError, GuestAgentUnavailableError } from './local-agent.ts';
// The range of a host's vCPU nice value (--vcpu-nice, OFFSHOOT_VCPU_NICE), checked where the daemons read it.
export { isVcpuNice, MAX_NICE as MAX_VCPU_NICE } from '../qemu/index.ts';
export type { LocalHostAgentOptions } from './local-agent.ts';
export { LocalStorageAgent, ImportRefusedError } from './local-storage-agent.ts';
export { HostLayout } from './layout.ts';
export { Locations, allowedRootId } from './locations.ts';
export type { RegisteredDatastore } from './locations.ts';
export { DiskNotAttachedError } from './live-disk-ops.ts';
export type { HostInfo as LocalHostInfo } from './types.ts';
