// Applies VM state changes: checks the guard, writes the record, publishes the
// event, all under the VM's lock so two operations cannot both claim a VM.
import { IllegalStateError } from '../common/index.ts';
import type { EventBus } from './events.ts';
import { KeyedMutex } from './lock.ts';
import type { Inventory, VmRecord } from './records.ts';
import type { VmOperation, VmState } from './state.ts';
import { assertOperationAllowed, assertTransition } from './state.ts';

export class StateKeeper {
  private readonly mutex = new KeyedMutex();

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

  /** Like claim, and also returns the state the VM was in, read under the same lock. */
  claimFrom(vmId: string, operation: VmOperation, to: VmState): Promise<{ vm: VmRecord; previous: VmState }> {
    return this.withVm(vmId, async (vm) => {
      assertOperationAllowed(vm.name, vm.state, operation);
      return { vm: await this.write(vm, to, null), previous: vm.state };
    });
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
