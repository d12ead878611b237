// Crash recovery of a fork the daemon was running when it died, from the
// fork's journal: the children it was making are removed (their QEMUs and
// files then count as orphans and are reaped), and the source is brought back
// to where it was: resumed if its QEMU survived, or restarted from the frozen
// template with its disks put back if its QEMU had already ended.
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
  const source = await deps.inventory.getVm(journal.sourceId);
  let did = `removed ${journal.childIds.length} unfinished children`;
  if (source && source.state === 'forking') {
    if (journal.phase === 'freezing' || !journal.frozen) {
      // The source QEMU may not have ended: re-adopt it and resume it if it was running.
      const status = source.runtime ? await deps.agent.adoptVm(source.id, source.runtime).catch(() => undefined) : undefined;
      if (status) {
        if (status === 'paused' && journal.previousState === 'running') await deps.agent.resumeVm(source.id);
        await deps.states.force(source.id, journal.previousState, 'fork interrupted by a daemon restart; resumed');
        did += '; resumed the source';
      } else {
        await deps.states.force(source.id, 'stopped', 'fork interrupted by a daemon restart while the source was being frozen', { runtime: null });
        did += '; the source had ended while being frozen';
      }
    } else if (journal.phase === 'frozen' || journal.phase === 'disks') {
      if (journal.disks && journal.disksRequest) await deps.agent.undoForkDisks(journal.disksRequest, journal.disks);
      try {
        const runtime = await deps.agent.startFromTemplate(source.id, source.name, source.spec, journal.frozen);
        if (journal.frozen.wasRunning) await deps.agent.resumeVm(source.id);
        await deps.states.force(source.id, journal.frozen.wasRunning ? 'running' : 'paused', 'fork interrupted by a daemon restart; restarted from its frozen memory', { runtime });
        did += '; restarted the source from its frozen memory';
      } catch (err) {
        deps.logger.error({ err, vm: source.name }, 'cannot restart the source of an interrupted fork');
        await deps.states.force(source.id, 'failed', `fork interrupted by a daemon restart and the source could not be restarted: ${(err as Error).message}`, { runtime: null });
        did += '; the source could not be restarted';
      }
    } else {
      await deps.states.force(source.id, journal.previousState, 'fork interrupted by a daemon restart after the source resumed');
    }
  }
  await deps.agent.removeOperationFiles(journal.forkId);
  return did;
}
