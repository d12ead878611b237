// Public surface of the client layer for Node: the typed API client, the
// storage and fabric clients that ride on it, and finding the daemon from the
// environment. A browser imports browser.ts instead (no Node modules).
export { OffshootClient, DaemonUnreachableError } from './client.ts';
export type { ClientOptions, ExecOutput, HostInfoView, VmAndTaskView, VmMemoryView } from './client.ts';
export { clientFromEnvironment, NoDaemonConfiguredError } from './environment.ts';
export { StorageClient } from './storage-client.ts';
export type { VerifyResult } from './storage-client.ts';
export { HostClient } from './host-client.ts';
export { FabricClient } from './fabric-client.ts';
export { MobilityClient } from './mobility-client.ts';
export type { MovePlan } from './mobility-client.ts';
export type { HostListItem } from './host-client.ts';
export { MigrateClient } from './migrate-client.ts';
export { MigrationPolicyClient } from './migration-policy-client.ts';
