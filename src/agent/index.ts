// Public surface of the host-agent layer: the HostAgent interface (VMs,
// memory, fork, checkpoints) and the StorageAgent interface (datastores, disk
// files, live snapshots and streams, copy workers), their plain data types,
// and their in-process implementations. The agent alone decides which host
// files may be used (path-policy.ts) and how QEMU is confined and shares
// files with it (confinement.ts, qemu-access.ts).
export type { HostAgent } from './host-agent.ts';
export type * from './types.ts';
export { LocalHostAgent, VmNotRunningError, GuestAgentUnavailableError } from './local-agent.ts';
export type { LocalHostAgentOptions } from './local-agent.ts';
export { HostLayout } from './layout.ts';
export { newMac } from './prepare-vm.ts';
export type { StorageAgent, FreezeResult, FrozenDisk, DiskChainEntry } from './storage-agent.ts';
export { LocalStorageAgent, ImportRefusedError } from './local-storage-agent.ts';
export type { CopyRunFile, CopyRunProgress, CopyRunResult } from './copy-runner.ts';
export { DiskNotAttachedError } from './live-disk-ops.ts';
