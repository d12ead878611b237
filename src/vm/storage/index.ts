// Public surface of the VM layer's storage half: the storage service (one
// handler for datastores, disks, clones, pools, copy jobs), its records and
// the StorageInventory interface the store implements.
export { StorageService } from './service.ts';
export type { StorageDeps } from './deps.ts';
export type { CloneResult } from './clone.ts';
export type { DatastoreView, DiskView } from './catalog.ts';
export type * from './records.ts';
export { COPY_JOB_STATES, isCopyJobState, isCopyJobDone } from './records.ts';
export * from './requests.ts';
export * from './errors.ts';
export { newDatastoreId, datastoreFile } from './catalog.ts';
