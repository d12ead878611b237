// Records of the storage half of the VM layer: datastores, disks in them, copy
// jobs and disk pools. Plain data, persisted by whatever implements
// StorageInventory (src/store). The files (sidecars, progress files) stay the
// truth for what is on a datastore; these records are the daemon's index.

import type { Locator, VmSpec } from '../../protocol/index.ts';
import { CopyNotADiskError } from './errors.ts';

/** A host that sees a datastore, and where the folder is on it. */
export interface DatastoreHost {
  hostId: string;
  path: string;
}

/**
 * A folder of disks. Local to one host, or shared by several that each see the same folder (perhaps at
 * another path): its files have the same references (`ds.<id>:…`) on every host in `hosts`.
 */
export interface DatastoreRecord {
  id: string;
  name: string;
  hosts: DatastoreHost[];
  createdAt: string;
}

export interface DiskRecord {
  id: string;
  name: string;
  datastore: string;
  /** The file, by reference (valid on every host that sees the datastore). */
  file: Locator;
  format: 'qcow2' | 'raw';
  contentId: string;
  /** The disk this one is a delta over (same datastore), or null. */
  parentId: string | null;
  virtualSize: number;
  readOnly: boolean;
  createdAt: string;
}

export const COPY_JOB_STATES = ['queued', 'running', 'paused', 'succeeded', 'failed', 'cancelled'] as const;
export type CopyJobState = (typeof COPY_JOB_STATES)[number];

export function isCopyJobState(value: string): value is CopyJobState {
  return (COPY_JOB_STATES as readonly string[]).includes(value);
}

export function isCopyJobDone(state: CopyJobState): boolean {
  return state === 'succeeded' || state === 'failed' || state === 'cancelled';
}

/** One file of a copy job: copied byte-exact from source to target (references on the job's host). */
export interface CopyFile {
  source: Locator;
  target: Locator;
  /**
   * The sidecar the target gets when the job succeeds (a datastore disk). Absent for a file that is not a
   * datastore disk: a template placement's bases and memory file, in its host's own folder (fabric/place.ts).
   */
  disk?: DiskRecord;
  /**
   * The host that has the source, when it is not the job's host: the job's host reads it from that host's
   * one-file server (a copy between hosts). Absent: the source is a file the job's host sees itself.
   */
  sourceHostId?: string;
}

/** What happens when the copy completes. */
export type CopyPurpose =
  | { kind: 'clone'; cloneVmId: string; cloneName: string; spec: VmSpec; start: boolean }
  | { kind: 'pool'; poolId: string; slot: string }
  | { kind: 'move'; diskId: string }
  /** `disk seed`: a copy of a disk's chain on another datastore (often another host), keeping its content ids. */
  | { kind: 'seed'; diskId: string }
  /**
   * A template carried to the job's host (fabric/place.ts): its bases, boot files and memory file, for the task
   * `taskId` that places it; `memory` is the checkpoint file the source exported (removed with the placement).
   */
  | { kind: 'place'; templateId: string; template: string; taskId: string; memory: PlacedMemory | null };

/** The checkpoint file a placement's source host exported its template into (removeCheckpoint by its id). */
export interface PlacedMemory {
  hostId: string;
  file: Locator;
  checkpointId: string;
  createdAt: string;
}

/** The disk record of a copied file of a datastore purpose (clone, pool, move, seed); throws for one without. */
export function copiedDisk(file: CopyFile): DiskRecord {
  if (!file.disk) throw new CopyNotADiskError(file.target);
  return file.disk;
}

/** One line of a copy job's history: a worker's run on a host, or a hand-over to another host. */
export interface CopyJobHistoryEntry {
  hostId: string;
  at: string;
  /** Chunks (and data bytes) the worker copied in this run (0 for a hand-over line). */
  chunksCopied: number;
  bytesCopied?: number;
  /** A hand-over: the host the job left, and why (requested, drained, lost). */
  handedOverFrom?: string;
  reason?: string;
  /** The file of the job the line is about (its index in files). */
  fileIndex?: number;
  /** A hand-over: the data bytes of that file the job had copied when it was handed over (what the last worker got to, as last reported). */
  bytesDoneBefore?: number;
}

export interface CopyJobProgress {
  fileIndex: number;
  bytesDone: number;
  bytesTotal: number;
  chunksDone: number;
  chunksTotal: number;
  /** Chunks copied by the worker processes of this job, for accounting after a resume or hand-over. */
  chunksCopied: number;
  workers: number;
}

export interface CopyJobRecord {
  id: string;
  purpose: CopyPurpose;
  state: CopyJobState;
  datastore: string;
  /** The host whose agent copies (it sees the sources and the target datastore). */
  hostId: string;
  /** Every host that copied part of the job, in order (a job handed over shows more than one, and the hand-over itself). */
  history: CopyJobHistoryEntry[];
  files: CopyFile[];
  progress: CopyJobProgress;
  error: { code: string; message: string; details: Record<string, unknown> } | null;
  createdAt: string;
  updatedAt: string;
  /** The task that runs the job now (a copy job runs as a task: one controller at a time, taken over if it dies). */
  taskId?: string | null;
  /** The agent operation copying the current file, so a controller taking the task over reattaches to it. */
  operationId?: string | null;
  /** A pause or cancel asked of the controller running the job (through its task's cancel request). */
  request?: 'pause' | 'cancel' | null;
}

export type PoolSlotState = 'filling' | 'ready';

export interface PoolSlot {
  id: string;
  state: PoolSlotState;
  jobId: string | null;
  /** The copied disks of this slot, top first (their paths are in the slot's folder). */
  disks: DiskRecord[];
}

export interface PoolRecord {
  id: string;
  name: string;
  /** The host of the source VM, whose frozen files the copies are made from. */
  hostId: string;
  sourceVmId: string;
  sourceVmName: string;
  datastore: string;
  size: number;
  /** Content ids of the source's frozen disks the copies were made from; a VM whose content moved on makes the pool stale. */
  sourceContentIds: string[];
  /** The frozen source files (top of each disk's chain first) the copies are made from. */
  sourceFiles: { diskId: string; chain: DiskRecord[] }[];
  slots: PoolSlot[];
  createdAt: string;
  updatedAt: string;
}

export interface StorageInventory {
  insertDatastore(ds: DatastoreRecord): Promise<void>;
  updateDatastore(name: string, patch: Partial<Pick<DatastoreRecord, 'hosts' | 'id'>>): Promise<DatastoreRecord>;
  deleteDatastore(name: string): Promise<void>;
  getDatastore(name: string): Promise<DatastoreRecord | undefined>;
  listDatastores(): Promise<DatastoreRecord[]>;

  insertDisk(disk: DiskRecord): Promise<void>;
  updateDisk(id: string, patch: Partial<Omit<DiskRecord, 'id'>>): Promise<DiskRecord>;
  deleteDisk(id: string): Promise<void>;
  getDisk(id: string): Promise<DiskRecord | undefined>;
  listDisks(datastore?: string): Promise<DiskRecord[]>;
  /** Replaces every disk record of a datastore (rescan). */
  replaceDisks(datastore: string, disks: DiskRecord[]): Promise<void>;

  insertCopyJob(job: CopyJobRecord): Promise<void>;
  updateCopyJob(id: string, patch: Partial<Omit<CopyJobRecord, 'id' | 'createdAt'>>): Promise<CopyJobRecord>;
  getCopyJob(id: string): Promise<CopyJobRecord | undefined>;
  listCopyJobs(): Promise<CopyJobRecord[]>;

  insertPool(pool: PoolRecord): Promise<void>;
  updatePool(id: string, patch: Partial<Omit<PoolRecord, 'id' | 'createdAt'>>): Promise<PoolRecord>;
  deletePool(id: string): Promise<void>;
  getPool(ref: string): Promise<PoolRecord | undefined>;
  listPools(): Promise<PoolRecord[]>;
}
