// Crash recovery of a fork the daemon was running when it died, from the
// fork's journal. The children it was making are removed from the inventory
// (their QEMUs and files then count as orphans and are reaped). The source:
// if its old QEMU still runs, the fork had not switched over: QEMUs waiting
// for the device state are killed, the disk split is undone and the source is
// resumed. If the old QEMU is gone but its replacement runs, the switch-over
// had happened: the replacement is adopted with the new disks.
import type { Logger } from '../../common/index.ts';
import type { HostAgent } from '../../agent/index.ts';
import type { Inventory } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import type { ForkJournal } from './run-fork.ts';

export interface ForkRecoveryDeps {
  inventory: Inventory;
  agent: HostAgent;
  states: StateKeeper;
  logger: Logger;
}

/** Runs before VMs are re-adopted. Returns what it did, for the task's message. */
export async function recoverFork(deps: ForkRecoveryDeps, journal: ForkJournal): Promise<string> {
  for (const id of journal.childIds) await deps.inventory.deleteVm(id);
  let did = `removed ${journal.childIds.length} unfinished children`;
  const source = await deps.inventory.getVm(journal.sourceId);
  if (!source || source.state !== 'forking') {
    await deps.agent.removeOperationFiles(journal.forkId);
    return did;
  }
  const replacement = journal.incoming?.[source.id];
  const recordSwitched = journal.phase === 'switched' || (replacement !== undefined && source.runtime?.pid === replacement.pid);
  const oldStatus = source.runtime ? await deps.agent.adoptVm(source.id, source.runtime).catch(() => undefined) : undefined;
  if (recordSwitched && oldStatus) {
    await deps.states.force(source.id, oldStatus, 'fork interrupted by a daemon restart after the switch-over');
    did += '; the source had switched over and runs';
  } else if (oldStatus) {
    for (const [vmId, runtime] of Object.entries(journal.incoming ?? {})) await deps.agent.killStray(vmId, runtime);
    if (journal.disks) {
      await deps.agent.undoForkDisks({ sourceId: source.id, sourceDisks: source.spec.disks, childIds: journal.childIds, maxDepth: 0, live: true }, journal.disks);
    }
    if (oldStatus === 'paused' && journal.previousState === 'running') await deps.agent.resumeVm(source.id);
    await deps.states.force(source.id, journal.previousState, 'fork interrupted by a daemon restart; the source ran on');
    did += '; undid the disk split and resumed the source';
  } else if (replacement && journal.disks && (await deps.agent.adoptVm(source.id, replacement).catch(() => undefined))) {
    await deps.states.force(source.id, journal.previousState, 'fork interrupted by a daemon restart after the switch-over', { runtime: replacement, spec: { ...source.spec, disks: journal.disks.source } });
    did += '; adopted the source after its switch-over';
  } else {
    await deps.states.force(source.id, 'stopped', 'fork interrupted by a daemon restart and the source QEMU was gone', { runtime: null });
    did += '; the source QEMU was gone';
  }
  await deps.agent.removeOperationFiles(journal.forkId);
  return did;
}
