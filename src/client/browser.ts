// The surface of the client layer that a browser can load (no Node modules):
// the typed API client, the storage client, OffshootError, and the record
// types the API speaks. The web console (web/) imports only this file.
export { OffshootClient, DaemonUnreachableError } from './client.ts';
export type { ClientOptions, HostInfoView, VmAndTaskView, VmMemoryView } from './client.ts';
export { StorageClient } from './storage-client.ts';
export { OffshootError } from '../common/browser.ts';
export type {
  CheckpointRecord,
  CheckpointResult,
  CloneRequest,
  CloneResult,
  CopyJobRecord,
  DatastoreView,
  DiskRecord,
  DiskView,
  EngineEvent,
  ForkRequest,
  ForkResult,
  RestoreRequest,
  TaskRecord,
  TaskState,
  VmDisk,
  VmRecord,
  VmState,
} from '../vm/index.ts';
