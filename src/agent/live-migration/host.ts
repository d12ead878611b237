// What the migration code needs from the host agent (the narrow part of
// LocalHostAgent it works through, as the fork stager does), the fixed ports
// of a migration's streams and the errors of this folder. The ports never
// collide: each operation listens on its own path's /31 address.
import { OffshootError } from '../../common/index.ts';
import type { ErrorDetails, Logger } from '../../common/index.ts';
import type { HostLayout } from '../layout.ts';
import type { QemuAccess } from '../qemu-access.ts';
import type { RunningVm } from '../running-vm.ts';
import type { VmMemory, VmRuntime, VmSpec } from '../types.ts';
import type { MigrationPaths } from './paths.ts';

/** The destination's migration listener, on its per-operation address. */
export const MIGRATION_PORT = 49152;
/** The destination's NBD server (disk mirrors), on its per-operation address. */
export const NBD_PORT = 49153;

export interface MigrationHost {
  readonly layout: HostLayout;
  readonly access: QemuAccess;
  readonly logger: Logger;
  readonly paths: MigrationPaths;
  /** The VM's tracked QEMU, if any. */
  tracked(vmId: string): RunningVm | undefined;
  /** The VM's tracked QEMU (VM_NOT_RUNNING otherwise). */
  running(vmId: string): RunningVm;
  launch(vmId: string, name: string, spec: VmSpec, options: { memory: VmMemory; incoming?: boolean; paused?: boolean; userfaultfd?: boolean }): Promise<{ vm: RunningVm; runtime: VmRuntime }>;
  discard(vm: RunningVm): Promise<void>;
  track(vm: RunningVm): void;
  untrack(vmId: string): void;
}

/** A migration step this host refuses (the VM already here, no such migration, files in the way). HTTP 409. */
export class MigrationRefusedError extends OffshootError {
  constructor(message: string, details: ErrorDetails) {
    super('MIGRATION_REFUSED', message, details, 409);
  }
}

/** Pre-copy did not converge (or the migration did not end) within its time budget; the VM runs on at the source. HTTP 504. */
export class MigrationTimeoutError extends OffshootError {
  constructor(vmId: string, reason: string, details: ErrorDetails = {}) {
    super('MIGRATION_TIMEOUT', `the migration of VM ${vmId} was stopped: ${reason}; the VM runs on at its source`, { vmId, ...details }, 504);
  }
}
