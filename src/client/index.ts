// Public surface of the client layer: the typed API client, and the storage
// client that rides on it.
export { OffshootClient, DaemonUnreachableError, NoDaemonConfiguredError } from './client.ts';
export type { ClientOptions, ExecOutput, HostInfoView, VmAndTaskView, VmMemoryView } from './client.ts';
export { StorageClient } from './storage-client.ts';
export type { VerifyResult } from './storage-client.ts';
export { HostClient } from './host-client.ts';
export type { HostListItem } from './host-client.ts';
