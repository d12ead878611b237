// Streaming a running VM's backing chains into its own disks (QEMU block-stream
// with no base, an operation on the VM's host), one disk after another, with
// task progress: what an instant clone does after it boots and what `disk
// flatten` does. The caller holds the VM busy meanwhile
// (StateKeeper.claimBusy), so nothing else rewrites its disks; each disk's
// record loses its backing chain as soon as its stream has ended (a
// read-modify-write under the VM's lock); unused bases are then released.
import { runOperation } from '../../protocol/index.ts';
import type { TaskContext } from '../tasks.ts';
import type { StorageDeps } from './deps.ts';
import { agentOn } from './deps.ts';

export async function streamChainsIntoDisks(deps: StorageDeps, vm: { id: string; hostId: string }, diskIds: string[], ctx: TaskContext, verb: string): Promise<{ releasedBases: string[] }> {
  const agent = agentOn(deps, vm.hostId);
  for (const [i, diskId] of diskIds.entries()) {
    await runOperation(agent, 'streamWholeChain', { vmId: vm.id, diskId }, {
      onProgress: (e) => {
        const data = e.data as { done?: number; total?: number } | undefined;
        void ctx.progress((i + e.progress) / diskIds.length, `${verb} disk ${diskId}: ${Math.round((data?.done ?? 0) / 1048576)} of ${Math.round((data?.total ?? 0) / 1048576)} MiB`).catch(() => undefined);
      },
    });
    await deps.engine.states.updateSpec(vm.id, (spec) => ({ ...spec, disks: spec.disks.map((d) => (d.id === diskId ? { ...d, backing: [] } : d)) }));
  }
  return { releasedBases: (await deps.engine.collectGarbage(vm.hostId)).files };
}
