// What a crash recovery needs to roll a fork (or a checkpoint's freeze) back,
// persisted in its task as it advances: the phase, the children it was
// making, and what the host prepared (template, disk split, waiting QEMUs).
// The operation ids of the host's long calls are kept too, so a controller
// that restarts can reattach to them.
import type { ForkDisksResult, VmRuntime } from '../../protocol/index.ts';

export interface ForkJournal {
  forkId: string;
  sourceId: string;
  hostId: string;
  previousState: 'running' | 'paused';
  phase: 'preparing' | 'prepared' | 'switched';
  childIds: string[];
  templateId?: string;
  disks?: ForkDisksResult;
  incoming?: Record<string, VmRuntime>;
  /** The QEMU with an owned RAM file a fork of a fork started for its source (journaled before anything moved). */
  owned?: VmRuntime;
  prepareOperationId?: string;
  /** A checkpoint's record (written once switched) and the operation writing its file. */
  checkpointId?: string;
  writeOperationId?: string;
}
