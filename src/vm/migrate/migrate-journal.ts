// What a migration writes to its task's journal as it goes, so that a
// controller that died mid-migration can finish it or roll it back
// (recover-migration.ts): the two hosts, the path's operation id (which also
// names the path's links and keys on both hosts), the agents' operation ids,
// and the VM's spec and runtime at the destination once it has them. While it
// waits in the queue (admission.ts) only the VM, its previous state and the
// hosts are journaled (phase `queued`): nothing has moved yet.
import type { MigrateOutResult, VmRuntime, VmSpec } from '../../protocol/index.ts';
import type { VmState } from '../state.ts';

export const MIGRATION_PHASES = ['queued', 'plan', 'path', 'prepare', 'transfer', 'switched', 'done'] as const;
export type MigrationPhase = (typeof MIGRATION_PHASES)[number];

export interface MigrateJournal {
  vmId: string;
  phase: MigrationPhase;
  /** The state the VM was in before (running or paused): what a rollback returns it to. */
  previous: VmState;
  sourceHostId: string;
  destinationHostId: string;
  /** The path's operation id. */
  pathId: string;
  prepareOperationId: string;
  awaitOperationId: string;
  migrateOperationId: string;
  destinationSpec: VmSpec;
  /** The destination's QEMU (known once prepareIncoming answered). */
  destinationRuntime: VmRuntime | null;
  /** Filled once the source's migrateOut ended. */
  outcome?: MigrateOutResult;
  /** The source completed but the destination's agent did not answer: the VM was recorded there `unknown` (unconfirmed.ts). */
  unconfirmed?: boolean;
}
