// The records the VM engine keeps in the inventory: VMs, tasks and
// checkpoints. Plain data (a VM's spec names its files by reference, never by
// host path), stored by whatever implements Inventory (src/store).
import type { Locator, VmRuntime, VmSpec } from '../protocol/index.ts';
import type { InsertTaskOptions, UpdateTaskOptions, UpdateVmOptions } from './coordination.ts';
import type { VmState } from './state.ts';

export interface VmRecord {
  id: string;
  name: string;
  state: VmState;
  /** Why the VM is in its state (e.g. how QEMU ended); null when there is nothing to say. */
  stateReason: string | null;
  /** The host the VM lives on (its files, and its QEMU while it runs). */
  hostId: string;
  spec: VmSpec;
  runtime: VmRuntime | null;
  createdAt: string;
  updatedAt: string;
  /** Bumped by every update (see UpdateVmOptions.expectVersion); set by the inventory, so a record not yet inserted may leave it out (it starts at 0). */
  version?: number;
}

export const TASK_STATES = ['running', 'succeeded', 'failed'] as const;
export type TaskState = (typeof TASK_STATES)[number];

export function isTaskState(value: string): value is TaskState {
  return (TASK_STATES as readonly string[]).includes(value);
}

export function isTaskDone(state: TaskState): boolean {
  return state !== 'running';
}

export interface TaskError {
  code: string;
  message: string;
  details: Record<string, unknown>;
}

export interface TaskRecord {
  id: string;
  kind: string;
  targetId: string;
  targetName: string;
  state: TaskState;
  /** 0..1 */
  progress: number;
  message: string;
  result: unknown;
  error: TaskError | null;
  createdAt: string;
  updatedAt: string;
}

export type CheckpointState = 'writing' | 'complete' | 'failed';

/** A checkpoint file a host wrote: the VM's memory, device state and (by reference) its frozen disks. */
export interface CheckpointRecord {
  id: string;
  name: string;
  vmId: string;
  vmName: string;
  /** The host that holds the file and the frozen disks. */
  hostId: string;
  /** The file, by reference on its host. */
  file: Locator;
  /** Where the file is on its host (for people). */
  path: string;
  state: CheckpointState;
  memoryBytes: number;
  fileBytes: number | null;
  /** The VM's spec at the freeze point; its disks are the frozen bases the checkpoint refers to. */
  spec: VmSpec;
  createdAt: string;
}

/** Persistence the VM engine needs; src/store implements it over SQLite and PostgreSQL. */
export interface Inventory {
  insertVm(vm: VmRecord): Promise<void>;
  /** Applies the patch and bumps the version; VERSION_CONFLICT if `expectVersion` is given and the VM moved on. */
  updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt' | 'version'>>, options?: UpdateVmOptions): Promise<VmRecord>;
  /** Removes the VM (nothing happens if it is gone); VERSION_CONFLICT if `expectVersion` is given and the VM moved on. */
  deleteVm(id: string, options?: UpdateVmOptions): Promise<void>;
  getVm(id: string): Promise<VmRecord | undefined>;
  findVmByName(name: string): Promise<VmRecord | undefined>;
  listVms(): Promise<VmRecord[]>;

  /** Stores a new task; with `lease`, leased to its owner in the same statement (so no other controller takes it over first). */
  insertTask(task: TaskRecord, options?: InsertTaskOptions): Promise<void>;
  /**
   * Applies the patch; with `owner`, only while that controller still owns the task (LEASE_LOST otherwise: another
   * controller took it over). A patch that ends the task (succeeded, failed) also ends its lease.
   */
  updateTask(id: string, patch: Partial<Omit<TaskRecord, 'id' | 'createdAt'>>, options?: UpdateTaskOptions): Promise<TaskRecord>;
  getTask(id: string): Promise<TaskRecord | undefined>;
  listTasks(options?: { limit?: number; targetId?: string; state?: TaskState }): Promise<TaskRecord[]>;

  insertCheckpoint(checkpoint: CheckpointRecord): Promise<void>;
  updateCheckpoint(id: string, patch: Partial<Pick<CheckpointRecord, 'state' | 'fileBytes' | 'hostId' | 'file' | 'spec'>>): Promise<CheckpointRecord>;
  deleteCheckpoint(id: string): Promise<void>;
  findCheckpoint(ref: string): Promise<CheckpointRecord | undefined>;
  listCheckpoints(): Promise<CheckpointRecord[]>;
}
