// The first phase of a clone or a pool: freeze the source VM's writable disks
// into read-only bases on its host (a live snapshot when it runs, so the guest
// never stops) under the VM's lock (refused while an operation still changes
// its disks: VM_BUSY), and record its new deltas. A stopped VM whose delta
// nobody wrote since the last freeze keeps its base, so its content ids stay
// the same (and a pool made from them stays fresh).
import { IllegalStateError } from '../../common/index.ts';
import type { FrozenDisk } from '../../protocol/index.ts';
import type { VmRecord } from '../records.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';
import { CloneSourceError } from './errors.ts';

const OFFLINE = ['created', 'stopped'] as const;
const ONLINE = ['running', 'paused'] as const;

export async function freezeVmDisks(deps: StorageDeps, vmId: string, operation: string): Promise<{ vm: VmRecord; frozen: FrozenDisk[] }> {
  // The new bases are named by no record until the VM's record is written: no collection meanwhile.
  return deps.engine.holdGarbage(() => deps.engine.states.whenIdle(vmId, operation, async (vm) => {
    const online = (ONLINE as readonly string[]).includes(vm.state);
    if (!online && !(OFFLINE as readonly string[]).includes(vm.state)) throw new IllegalStateError(`VM "${vm.name}"`, vm.state, [...OFFLINE, ...ONLINE], operation);
    for (const disk of vm.spec.disks) if (!disk.readOnly && !disk.owned) throw new CloneSourceError(vm.name, `disk ${disk.id} (${disk.file}) is a writable disk Offshoot does not own; attach it read-only or import it into a datastore`);
    const agent = agentOn(deps, vm.hostId);
    const result = await agent.freezeDisks({ vmId: vm.id, disks: vm.spec.disks, running: online });
    if (result.moves.length === 0) return { vm, frozen: result.frozen };
    try {
      const updated = await deps.inventory.updateVm(vm.id, { spec: { ...vm.spec, disks: result.disks } });
      return { vm: updated, frozen: result.frozen };
    } catch (err) {
      if (!online) await agent.undoFreeze({ result });
      throw err;
    }
  }));
}
