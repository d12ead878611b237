// Garbage collection of memory templates and frozen bases. The control plane
// knows what is in use (templates mapped by live VMs, files in VM chains and
// in checkpoints, pins of operations in flight: the inventory's GC pins of
// every controller, and this controller's own); each host's agent gets that
// list for itself and decides what to delete (`releaseUnused`). A host that
// cannot be reached is skipped: nothing is deleted behind its back. The
// caller holds the fleet's garbage lock (VmEngine.holdGarbage), so no freeze
// on any controller makes bases no record names yet while this runs.
import type { Logger } from '../common/index.ts';
import type { AgentClient } from '../protocol/index.ts';
import type { Fleet } from './hosts/index.ts';
import type { Inventory } from './records.ts';
import { isLive } from './state.ts';

/** A pin on a memory template (other pins are file references). */
export const TEMPLATE_PIN = 'template:';

export interface GcDeps {
  inventory: Inventory;
  fleet: Fleet;
  logger: Logger;
  /** Every pinned file and template (`template:ID`), read after the lock is held. */
  pinned(): Promise<Iterable<string>>;
  agent(hostId: string): AgentClient;
  /** Files in use that VMs and checkpoints do not name (pools' sources, copy jobs' sources), by host. */
  extraFiles?: (hostId: string) => Promise<string[]>;
}

export async function collectGarbage(deps: GcDeps, onlyHost?: string): Promise<{ templates: string[]; files: string[] }> {
  const pinned = [...(await deps.pinned())];
  const vms = await deps.inventory.listVms();
  const checkpoints = await deps.inventory.listCheckpoints();
  const removed = { templates: [] as string[], files: [] as string[] };
  for (const host of deps.fleet.hosts()) {
    if (onlyHost && host.id !== onlyHost) continue;
    if (host.state === 'unreachable') continue;
    const templates = new Set<string>();
    const files = new Set<string>();
    for (const pin of pinned) {
      if (pin.startsWith(TEMPLATE_PIN)) templates.add(pin.slice(TEMPLATE_PIN.length));
      else files.add(pin);
    }
    for (const vm of vms) {
      if (vm.hostId !== host.id) continue;
      if (vm.runtime?.memory.templateId && isLive(vm.state)) templates.add(vm.runtime.memory.templateId);
      for (const disk of vm.spec.disks) for (const b of disk.backing) files.add(b);
    }
    for (const checkpoint of checkpoints) {
      if (checkpoint.hostId !== host.id) continue;
      for (const disk of checkpoint.spec.disks) for (const f of [disk.file, ...disk.backing]) files.add(f);
    }
    for (const f of (await deps.extraFiles?.(host.id)) ?? []) files.add(f);
    try {
      const released = await deps.agent(host.id).releaseUnused({ templates: [...templates], files: [...files] });
      removed.templates.push(...released.templates);
      removed.files.push(...released.files);
    } catch (err) {
      deps.logger.warn({ host: host.name, err: (err as Error).message }, 'garbage collection skipped a host');
    }
  }
  if (removed.templates.length || removed.files.length) deps.logger.info(removed, 'released unused templates and bases');
  return removed;
}
