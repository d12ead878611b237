// Public surface of the storage layer: safe images (qcow2 headers read by
// Offshoot itself before QEMU sees a file), datastore folders and disk
// sidecars (content ids), the disk content hash, and the copy engine (chunked,
// sparse, resumable, verified copies run by a worker process, from a local
// file or from another host's one-file server).
export { inspectImage, UnsafeImageError, UNSAFE_REASONS, DEFAULT_MAX_CHAIN_DEPTH } from './safe-image.ts';
export type { SafeImage, UnsafeReason } from './safe-image.ts';
export { readQcow2Header, isQcow2, qcow2NeverWritten, CorruptImageHeaderError, QCOW2_MAGIC } from './qcow2-header.ts';
export { diskVirtualSize } from './virtual-size.ts';
export type { Qcow2Header } from './qcow2-header.ts';
export { DatastoreLayout, DatastorePathError, DATASTORE_MARKER, initDatastore, readMarker, datastoreUsage, scanDatastore } from './datastore.ts';
export type { DatastoreUsage, ScannedDisk } from './datastore.ts';
export { diskMetaSchema, DiskMetaError, DISK_META_SUFFIX, newContentId, metaPathFor, readDiskMeta, writeDiskMeta, removeDiskMeta } from './disk-meta.ts';
export type { DiskMeta } from './disk-meta.ts';
export { diskContentHash } from './disk-hash.ts';
// Copy engine: resumable, hand-over-able, verified chunked copies of disk files.
export { copyFile, cancelCopy, fileContentHash, fileChunkHashes, contentHashOf, isCopyState, COPY_STATES, DEFAULT_CHUNK_BYTES, DEFAULT_BUFFER_BYTES, DEFAULT_BUFFERS } from './copy-engine.ts';
export type { CopyOptions, CopyProgress, CopyResult, CopyState } from './copy-engine.ts';
export { CopySourceChangedError, CopyBusyError, CopyVerifyFailedError, CopyTargetExistsError, CopyProgressInvalidError, CopyLockLostError, CopySourceUnreachableError } from './copy-errors.ts';
export { COPY_WORKER_SCRIPT, COPY_WORKER_EXIT, COPY_SOURCE_TOKEN_ENV, copyWorkerCommand, parseCopyWorkerLine, CopyWorkerProtocolError } from './copy-worker-protocol.ts';
export type { CopyWorkerArgs, CopyWorkerMessage } from './copy-worker-protocol.ts';
export { copyWorkerBundle, copyWorkerBundleError } from './copy-worker-bundle.ts';
export { readProgress as readCopyProgress, progressPath as copyProgressPath } from './copy-progress.ts';
export type { CopyProgressFile } from './copy-progress.ts';
export { readCopyLock, lockPath as copyLockPath } from './copy-lock.ts';
export type { LockHolder as CopyLockHolder } from './copy-lock.ts';
export { dataExtents } from './extents.ts';
export { serveFile } from './file-server.ts';
export type { FileServer, FileServerOptions } from './file-server.ts';
export type { RemoteFile } from './copy-source.ts';
export { acquireCopyLock, DEFAULT_LEASE_MS as COPY_LOCK_LEASE_MS } from './copy-lock.ts';
export type { Extent } from './extents.ts';
