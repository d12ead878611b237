// Public surface of the client layer: the typed API client.
export { OffshootClient, DaemonUnreachableError, NoDaemonConfiguredError } from './client.ts';
export type { ClientOptions, ExecOutput, HostInfoView, VmAndTaskView, VmMemoryView } from './client.ts';
