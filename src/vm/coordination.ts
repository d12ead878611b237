// What several controllers over one inventory coordinate through (issue 11),
// as interfaces the store implements over SQLite (one controller) and
// PostgreSQL (a fleet) with the same semantics:
// - VM versions: every update bumps a VM's version; `updateVm(id, patch,
//   { expectVersion })` is a compare-and-set that fails with VERSION_CONFLICT.
// - VM claims: one operation per VM at a time across controllers, with an
//   owner and an expiry; a live claim refuses others with BUSY, an expired one
//   can be taken (a dead controller loses its claims when they expire).
// - GC pins: files garbage collection must keep, as rows with a holder (what
//   needs them: a pool, a copy job, a task) and an owning controller (null for
//   pins that outlive any controller, such as a pool's).
// - Task leases: a running task has an owner whose lease it renews; tasks
//   whose lease expired are taken over by one other controller at a time.
// - Controllers: each registers with a lease it renews by heartbeat.
// - A shared event bus: an event one controller publishes reaches every
//   controller's subscribers once.
// Times are milliseconds since the epoch on the controllers' clocks, which
// must agree (NTP) to well under a lease.
import { OffshootError } from '../common/index.ts';
import type { TaskRecord } from './records.ts';

/** Options of Inventory.updateVm. */
export interface UpdateVmOptions {
  /** Compare-and-set: the update applies only if the VM's version is still this one. */
  expectVersion?: number;
}

/** Options of Inventory.insertTask. */
export interface InsertTaskOptions {
  /** Lease the new task to this controller for ttlMs. */
  lease?: { owner: string; ttlMs: number };
}

/** Options of Inventory.updateTask. */
export interface UpdateTaskOptions {
  /** Fencing: apply only while this controller owns the task. */
  owner?: string;
}

/** A compare-and-set lost: the record changed since it was read. HTTP 409. */
export class VersionConflictError extends OffshootError {
  constructor(kind: string, id: string, expected: number, actual: number) {
    super('VERSION_CONFLICT', `${kind} ${id} changed meanwhile (version ${actual}, expected ${expected}); read it again and retry`, { kind, id, expected, actual }, 409);
  }
}

/** Another operation holds the VM. HTTP 409. */
export class BusyError extends OffshootError {
  constructor(vmId: string, holder: string, operation: string, expiresAt: number) {
    super('BUSY', `VM ${vmId} is busy: controller ${holder} runs ${operation} on it`, { vmId, holder, operation, expiresAt: new Date(expiresAt).toISOString() }, 409);
  }
}

/** A claim or lease this controller held was taken over (it expired) or removed. HTTP 409. */
export class LeaseLostError extends OffshootError {
  constructor(kind: string, id: string, owner: string, holder: string | null) {
    super('LEASE_LOST', `${owner} no longer holds the ${kind} of ${id}${holder ? ` (now held by ${holder})` : ''}`, { kind, id, owner, holder }, 409);
  }
}

export interface VmClaim {
  vmId: string;
  /** The controller that holds it. */
  owner: string;
  operation: string;
  /** Unique per acquisition: renew and release act only on this claim, never on a later one. */
  token: string;
  claimedAt: number;
  expiresAt: number;
}

export interface VmClaims {
  /** Claims the VM for an operation; BUSY if another claim is live (even one of the same owner). */
  acquire(vmId: string, owner: string, operation: string, ttlMs: number): Promise<VmClaim>;
  /** Extends the claim; LEASE_LOST if it was taken over or released. */
  renew(claim: VmClaim, ttlMs: number): Promise<VmClaim>;
  /** Releases the claim; nothing happens if it is no longer this one. */
  release(claim: VmClaim): Promise<void>;
  /** The VM's claim, live or expired, if any. */
  get(vmId: string): Promise<VmClaim | undefined>;
  /** Releases every claim a controller holds (a controller starting again under its id drops its previous life's); returns how many. */
  releaseOwnedBy(owner: string): Promise<number>;
}

/** What the engine coordinates through: the store's claims, pins, task leases and controllers. */
export interface CoordinationStore {
  claims: VmClaims;
  pins: GcPins;
  leases: TaskLeases;
  controllers: Controllers;
}

export interface GcPin {
  path: string;
  /** What needs the file, e.g. `pool:ID`, `copy-job:ID`, `task:ID`. */
  holder: string;
  /** The controller whose death ends the pin, or null for a pin that outlives controllers. */
  owner: string | null;
  createdAt: string;
}

export interface GcPins {
  /** Pins paths for a holder (idempotent). */
  add(holder: string, paths: readonly string[], owner: string | null): Promise<void>;
  /** Removes a holder's pins of these paths, or all of its pins. */
  remove(holder: string, paths?: readonly string[]): Promise<void>;
  /** Every pinned path, whoever holds it. */
  paths(): Promise<Set<string>>;
  list(filter?: { holder?: string; owner?: string }): Promise<GcPin[]>;
  /** Gives a holder's pins a new owner (a controller taking over a task); returns how many. */
  adopt(holder: string, owner: string | null): Promise<number>;
  /** Removes the pins a controller owns (it died); returns how many. */
  removeOwnedBy(owner: string): Promise<number>;
}

export interface TaskLease {
  taskId: string;
  owner: string;
  expiresAt: number;
}

export interface TaskLeases {
  /** Leases a task to its owner; LEASE_LOST if another owner's lease on it is live. */
  acquire(taskId: string, owner: string, ttlMs: number): Promise<TaskLease>;
  /** Extends the lease of every running task the owner holds (its heartbeat); returns how many. */
  renewAll(owner: string, ttlMs: number): Promise<number>;
  /** Extends one task's lease; LEASE_LOST if the owner no longer holds it. */
  renew(taskId: string, owner: string, ttlMs: number): Promise<TaskLease>;
  /** Gives a task up (it finished); nothing happens if the owner no longer holds it. */
  release(taskId: string, owner: string): Promise<void>;
  get(taskId: string): Promise<TaskLease | undefined>;
  /** Takes over running tasks whose lease expired (or that never had one), at most `limit`, each by one caller only. */
  claimExpiredTasks(owner: string, ttlMs: number, limit?: number): Promise<TaskRecord[]>;
  /** Running tasks with an owner, and their leases (live or expired). */
  list(): Promise<TaskLease[]>;
  /** Asks the owner of a running task to cancel it; false if the task is not running. */
  requestCancel(taskId: string): Promise<boolean>;
  /** The running tasks of `owner` someone asked to cancel. */
  cancelRequested(owner: string): Promise<string[]>;
}

export interface ControllerRecord {
  id: string;
  /** Where its API answers, if it serves one. */
  url: string | null;
  startedAt: string;
  heartbeatAt: number;
  leaseExpiresAt: number;
}

export interface Controllers {
  register(id: string, url: string | null, ttlMs: number): Promise<ControllerRecord>;
  /** Renews the controller's lease; LEASE_LOST if it was reaped meanwhile (it must stop or register anew). */
  heartbeat(id: string, ttlMs: number): Promise<ControllerRecord>;
  deregister(id: string): Promise<void>;
  list(): Promise<ControllerRecord[]>;
  /** Controllers whose lease has not expired. */
  live(): Promise<ControllerRecord[]>;
  /** Removes controllers whose lease expired, and the pins they owned; returns their ids. */
  reapExpired(): Promise<string[]>;
}

/** Events published by one controller reach the subscribers of every controller, each once, in publish order per publisher. */
export interface SharedEventBus<E> {
  /** Delivers to this controller's subscribers at once, then to the others'. */
  publish(event: E): Promise<void>;
  subscribe(listener: (event: E) => void): () => void;
  close(): Promise<void>;
}
