// Applies VM state changes: checks the guard, writes the record, publishes the
// event, so that two operations cannot both claim a VM, even on two
// controllers over one inventory:
// - every write is a compare-and-set on the VM's version, read-check-write
//   again on a conflict (so a record read earlier is never written back);
// - operations that act on a VM before they record it take the VM's claim in
//   the inventory (owner, operation, expiry): `claim` with a state change
//   (start, stop) briefly, `whenIdle` (freezes, attach, delete) and `claimFrom`
//   (fork, checkpoint) for their critical section, so another controller's
//   such operation waits a moment or gets BUSY.
// Besides its lifecycle state, a VM can be busy with an operation that still
// changes its spec after the state has moved on (a fork flattening its disks
// after the VM runs again, `disk flatten`, an instant clone's stream): it then
// holds the VM's claim as a long one ("busy: …"), kept alive by the
// controller's beat, and nothing else that reads and rewrites its disks (fork,
// checkpoint, clone, pool, flatten, attach, delete) may claim the VM meanwhile
// (VM_BUSY); start, stop, pause, resume, kill and exec still may. A
// controller that dies loses its claims when they expire. Within one process
// a keyed mutex orders the callers of one VM first.
import { IllegalStateError, OffshootError, sleep } from '../common/index.ts';
import { BusyError, VersionConflictError } from './coordination.ts';
import type { VmClaim } from './coordination.ts';
import type { Coordinator } from './coordinator.ts';
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

/** A long claim's operation names what the VM is busy with. */
const BUSY_PREFIX = 'busy: ';
/** How long an operation waits for another controller's short claim on the VM before it answers BUSY. */
const SHORT_CLAIM_WAIT_MS = 15_000;
/** Compare-and-set retries of one read-check-write. */
const CAS_ATTEMPTS = 8;

type Entry = 'tolerant' | 'strict';

export class StateKeeper {
  private readonly mutex = new KeyedMutex();
  /** VMs this controller holds busy, with what, and the claim that says so. */
  private readonly busy = new Map<string, { what: string; claim: VmClaim | null }>();

  constructor(
    private readonly inventory: Inventory,
    private readonly events: EventBus,
    private readonly coordinator?: Coordinator,
  ) {}

  /**
   * Runs `fn` on the freshest record, with the VM's lock held in this process; `fn` runs again on a fresh record
   * when its write lost a compare-and-set (keep it a read-check-write).
   */
  withVm<T>(vmId: string, fn: (vm: VmRecord) => Promise<T>): Promise<T> {
    return this.mutex.run(vmId, () => this.fresh(vmId, fn));
  }

  private async fresh<T>(vmId: string, fn: (vm: VmRecord) => Promise<T>): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const vm = await this.inventory.getVm(vmId);
      if (!vm) throw new IllegalStateError(`VM ${vmId}`, 'deleted', ['any'], 'use');
      try {
        return await fn(vm);
      } catch (err) {
        if (!(err instanceof VersionConflictError) || attempt >= CAS_ATTEMPTS) throw err;
        await sleep(Math.random() * 10 * attempt);
      }
    }
  }

  /**
   * Takes the VM's claim for `operation` around `fn`. Strict: a VM busy with a long operation is VM_BUSY, and a
   * short claim of another controller is waited for (then BUSY). Tolerant: a long operation's claim is no
   * obstacle (fn runs without a claim). With `keep`, the claim stays (a long one) once fn succeeded.
   */
  private async entry<T>(vmId: string, operation: string, mode: Entry, fn: (vm: VmRecord) => Promise<T>, keep?: string): Promise<T> {
    return this.mutex.run(vmId, async () => {
      const coordinator = this.coordinator;
      if (!coordinator) return this.fresh(vmId, fn);
      const name = keep === undefined ? operation : `${BUSY_PREFIX}${keep}`;
      let claim: VmClaim | null = null;
      const deadline = Date.now() + SHORT_CLAIM_WAIT_MS;
      for (;;) {
        try {
          claim = await coordinator.claim(vmId, name, { long: keep !== undefined });
          break;
        } catch (err) {
          if (!(err instanceof BusyError)) throw err;
          const holding = String(err.details.operation ?? '');
          if (holding.startsWith(BUSY_PREFIX)) {
            if (mode === 'tolerant') break;
            const vm = await this.inventory.getVm(vmId);
            throw new VmBusyError(vm?.name ?? vmId, holding.slice(BUSY_PREFIX.length), operation);
          }
          if (Date.now() >= deadline) throw err;
          await sleep(50 + Math.random() * 50);
        }
      }
      let kept = false;
      try {
        const result = await this.fresh(vmId, fn);
        if (keep !== undefined && claim) {
          this.busy.set(vmId, { what: keep, claim });
          kept = true;
        }
        return result;
      } finally {
        if (claim && !kept) await coordinator.release(claim).catch(() => undefined);
      }
    });
  }

  /** Claims the VM for `operation`: checks its state allows it and moves it to `to` (if given). */
  claim(vmId: string, operation: VmOperation, to?: VmState, reason: string | null = null): Promise<VmRecord> {
    const check = async (vm: VmRecord) => {
      assertOperationAllowed(vm.name, vm.state, operation);
      if (to === undefined || to === vm.state) return vm;
      return this.write(vm, to, reason);
    };
    // A claim that only checks (pause, resume, kill, exec) needs no inventory claim: it writes nothing.
    return to === undefined ? this.withVm(vmId, check) : this.entry(vmId, operation, 'tolerant', check);
  }

  /**
   * Like claim, and also returns the state the VM was in, read under the same claim. Refused while the VM is
   * busy; with `busy`, the VM is busy with it from now until release(vmId).
   */
  claimFrom(vmId: string, operation: VmOperation, to: VmState, busy?: string): Promise<{ vm: VmRecord; previous: VmState }> {
    return this.entry(
      vmId,
      operation,
      'strict',
      async (vm) => {
        this.assertNotBusy(vm, operation);
        assertOperationAllowed(vm.name, vm.state, operation);
        const claimed = { vm: await this.write(vm, to, null), previous: vm.state };
        if (busy !== undefined && !this.coordinator) this.busy.set(vmId, { what: busy, claim: null });
        return claimed;
      },
      busy,
    );
  }

  /** Marks the VM busy with `what` (after `check` passes on the fresh record); VM_BUSY if it already is. */
  claimBusy(vmId: string, what: string, operation: string, check: (vm: VmRecord) => void = () => undefined): Promise<VmRecord> {
    return this.entry(
      vmId,
      operation,
      'strict',
      async (vm) => {
        this.assertNotBusy(vm, operation);
        check(vm);
        if (!this.coordinator) this.busy.set(vmId, { what, claim: null });
        return vm;
      },
      what,
    );
  }

  /** Runs `fn` with the VM's claim if it is not busy (VM_BUSY otherwise), on the freshest record. */
  whenIdle<T>(vmId: string, operation: string, fn: (vm: VmRecord) => Promise<T>): Promise<T> {
    return this.entry(vmId, operation, 'strict', async (vm) => {
      this.assertNotBusy(vm, operation);
      return fn(vm);
    });
  }

  /** Ends the VM's busy mark (its long claim is released). */
  async release(vmId: string): Promise<void> {
    const held = this.busy.get(vmId);
    this.busy.delete(vmId);
    if (held?.claim && this.coordinator) await this.coordinator.release(held.claim).catch(() => undefined);
  }

  /** What this controller holds the VM busy with, if anything. */
  busyWith(vmId: string): string | undefined {
    return this.busy.get(vmId)?.what;
  }

  private assertNotBusy(vm: VmRecord, operation: string): void {
    const busy = this.busy.get(vm.id);
    if (busy !== undefined) throw new VmBusyError(vm.name, busy.what, operation);
  }

  /** Read-modify-write of the VM's spec on its current record (never from a copy read earlier); the VM's state is unchanged. */
  updateSpec(vmId: string, change: (spec: VmRecord['spec']) => VmRecord['spec']): Promise<VmRecord> {
    return this.withVm(vmId, async (vm) => this.inventory.updateVm(vm.id, { spec: change(vm.spec), updatedAt: new Date().toISOString() }, this.expect(vm)));
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

  /** Sets the state without the transition guard: only for recovery. */
  force(vmId: string, to: VmState, reason: string | null, patch: Partial<VmRecord> = {}): Promise<VmRecord> {
    return this.withVm(vmId, (vm) => this.write(vm, to, reason, patch, true));
  }

  private expect(vm: VmRecord): { expectVersion?: number } {
    return vm.version === undefined ? {} : { expectVersion: vm.version };
  }

  private async write(vm: VmRecord, to: VmState, reason: string | null, patch: Partial<VmRecord> = {}, unguarded = false): Promise<VmRecord> {
    if (vm.state !== to && !unguarded) assertTransition(vm.name, vm.state, to);
    const { version: _version, id: _id, createdAt: _createdAt, ...rest } = patch;
    const updated = await this.inventory.updateVm(vm.id, { ...rest, state: to, stateReason: reason, updatedAt: new Date().toISOString() }, this.expect(vm));
    if (vm.state !== to) this.events.publish({ type: 'vm.state', vm: updated, previous: vm.state, at: updated.updatedAt });
    return updated;
  }
}
