// Applies VM state changes: checks the guard, writes the record, publishes the
// event, all under the VM's lock so two operations cannot both claim a VM.
//
// Besides its lifecycle state, a VM can be busy with an operation that still
// changes its spec after the state has moved on (a fork flattening its disks
// after the VM runs again, `disk flatten`, an instant clone's stream): while
// it is, nothing else that reads and rewrites its disks (fork, checkpoint,
// clone, pool, flatten, attach) may claim it (VM_BUSY), so no operation ever
// writes back an older spec. Every spec change is a read-modify-write under
// the VM's lock (updateSpec).
import { IllegalStateError, OffshootError } from '../common/index.ts';
import type { EventBus } from './events.ts';
import { KeyedMutex } from './lock.ts';
import type { Inventory, VmRecord } from './records.ts';
import type { VmOperation, VmState } from './state.ts';
import { assertOperationAllowed, assertTransition } from './state.ts';

/** The VM is busy with an operation that still changes its disks. HTTP 409. */
export class VmBusyError extends OffshootError {
  constructor(name: string, busyWith: string, operation: string) {
    super('VM_BUSY', `cannot ${operation} VM "${name}" now: it is busy ${busyWith}; try again when that is done`, { vm: name, busyWith, operation }, 409);
  }
}

export class StateKeeper {
  private readonly mutex = new KeyedMutex();
  /** VMs busy with an operation that changes their spec, and with what. */
  private readonly busy = new Map<string, string>();

  constructor(
    private readonly inventory: Inventory,
    private readonly events: EventBus,
  ) {}

  /** Runs `fn` with the VM's lock held, on the freshest record. */
  withVm<T>(vmId: string, fn: (vm: VmRecord) => Promise<T>): Promise<T> {
    return this.mutex.run(vmId, async () => {
      const vm = await this.inventory.getVm(vmId);
      if (!vm) throw new IllegalStateError(`VM ${vmId}`, 'deleted', ['any'], 'use');
      return fn(vm);
    });
  }

  /** Claims the VM for `operation`: checks its state allows it and moves it to `to` (if given). */
  claim(vmId: string, operation: VmOperation, to?: VmState, reason: string | null = null): Promise<VmRecord> {
    return this.withVm(vmId, async (vm) => {
      assertOperationAllowed(vm.name, vm.state, operation);
      if (to === undefined || to === vm.state) return vm;
      return this.write(vm, to, reason);
    });
  }

  /**
   * Like claim, and also returns the state the VM was in, read under the same lock. Refused while the VM is
   * busy; with `busy`, the VM is busy with it from now until release(vmId).
   */
  claimFrom(vmId: string, operation: VmOperation, to: VmState, busy?: string): Promise<{ vm: VmRecord; previous: VmState }> {
    return this.withVm(vmId, async (vm) => {
      this.assertNotBusy(vm, operation);
      assertOperationAllowed(vm.name, vm.state, operation);
      const claimed = { vm: await this.write(vm, to, null), previous: vm.state };
      if (busy !== undefined) this.busy.set(vmId, busy);
      return claimed;
    });
  }

  /** Marks the VM busy with `what` (after `check` passes on the fresh record, under the lock); VM_BUSY if it already is. */
  claimBusy(vmId: string, what: string, operation: string, check: (vm: VmRecord) => void = () => undefined): Promise<VmRecord> {
    return this.withVm(vmId, async (vm) => {
      this.assertNotBusy(vm, operation);
      check(vm);
      this.busy.set(vmId, what);
      return vm;
    });
  }

  /** Runs `fn` under the VM's lock if it is not busy (VM_BUSY otherwise), on the freshest record. */
  whenIdle<T>(vmId: string, operation: string, fn: (vm: VmRecord) => Promise<T>): Promise<T> {
    return this.withVm(vmId, async (vm) => {
      this.assertNotBusy(vm, operation);
      return fn(vm);
    });
  }

  release(vmId: string): void {
    this.busy.delete(vmId);
  }

  busyWith(vmId: string): string | undefined {
    return this.busy.get(vmId);
  }

  private assertNotBusy(vm: VmRecord, operation: string): void {
    const busy = this.busy.get(vm.id);
    if (busy !== undefined) throw new VmBusyError(vm.name, busy, operation);
  }

  /** Read-modify-write of the VM's spec under its lock (never from a copy read earlier); the VM's state is unchanged. */
  updateSpec(vmId: string, change: (spec: VmRecord['spec']) => VmRecord['spec']): Promise<VmRecord> {
    return this.withVm(vmId, async (vm) => this.inventory.updateVm(vm.id, { spec: change(vm.spec), updatedAt: new Date().toISOString() }));
  }

  /**
   * Moves the VM to `to` if it is currently in one of `from`; returns the record and whether it moved.
   * Used to finish operations and to apply QEMU exits, which may race each other.
   */
  settle(vmId: string, from: readonly VmState[], to: VmState, reason: string | null, patch: Partial<VmRecord> = {}): Promise<{ vm: VmRecord; moved: boolean }> {
    return this.withVm(vmId, async (vm) => {
      if (!from.includes(vm.state)) return { vm, moved: false };
      return { vm: await this.write(vm, to, reason, patch), moved: true };
    });
  }

  /** Sets the state without the transition guard: only for recovery after a daemon restart. */
  force(vmId: string, to: VmState, reason: string | null, patch: Partial<VmRecord> = {}): Promise<VmRecord> {
    return this.withVm(vmId, (vm) => this.write(vm, to, reason, patch, true));
  }

  private async write(vm: VmRecord, to: VmState, reason: string | null, patch: Partial<VmRecord> = {}, unguarded = false): Promise<VmRecord> {
    if (vm.state !== to && !unguarded) assertTransition(vm.name, vm.state, to);
    const updated = await this.inventory.updateVm(vm.id, { ...patch, state: to, stateReason: reason, updatedAt: new Date().toISOString() });
    if (vm.state !== to) this.events.publish({ type: 'vm.state', vm: updated, previous: vm.state, at: updated.updatedAt });
    return updated;
  }
}
