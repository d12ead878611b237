// Streaming a running VM's backing chains into its own disks (QEMU block-stream
// with no base), one disk after another, with task progress: what an instant
// clone does after it boots and what `disk flatten` does. The caller holds the
// VM busy meanwhile (StateKeeper.claimBusy), so nothing else rewrites its
// disks; each disk's record loses its backing chain as soon as its stream has
// ended (a read-modify-write under the VM's lock); unused bases are then
// released.
import type { TaskContext } from '../tasks.ts';
import type { StorageDeps } from './deps.ts';

export async function streamChainsIntoDisks(deps: StorageDeps, vmId: string, diskIds: string[], ctx: TaskContext, verb: string): Promise<{ releasedBases: string[] }> {
  for (const [i, diskId] of diskIds.entries()) {
    await deps.storage.streamWholeChain(vmId, diskId, (p) =>
      void ctx.progress((i + (p.length ? p.offset / p.length : 0)) / diskIds.length, `${verb} disk ${diskId}: ${Math.round(p.offset / 1048576)} of ${Math.round(p.length / 1048576)} MiB`).catch(() => undefined),
    );
    await deps.engine.states.updateSpec(vmId, (spec) => ({ ...spec, disks: spec.disks.map((d) => (d.id === diskId ? { ...d, backing: [] } : d)) }));
  }
  return { releasedBases: (await deps.engine.collectGarbage()).bases };
}
