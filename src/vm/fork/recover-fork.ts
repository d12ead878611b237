// Crash recovery of a fork (or a checkpoint's freeze, a fork with no
// children) a controller was running when it died, from the fork's journal,
// the host's own staged fork (an agent in its own process outlives the
// controller) and the disk renames the host logged. The children it was
// making are removed from the inventory (their QEMUs and files then count as
// orphans and are reaped). The source:
// - if a fork of a fork died while making the source's memory its own, an
//   agent that lived on undoes a target that had not taken over; otherwise the
//   QEMU it started (journaled before anything moved) has the VM when its
//   migration had completed or it had taken over (the old QEMU is killed),
//   else it is killed;
// - if its replacement QEMU runs (not waiting for device state), the
//   switch-over had happened: the replacement is adopted with the new disks
//   and the old QEMU is killed;
// - else if its old QEMU runs, the fork never switched: waiting QEMUs are
//   killed and the disk split is undone;
// - else the disk split is undone and the source is marked stopped.
// Whichever QEMU has the source then, it runs again if it ran before.
import type { Logger } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import type { Inventory, VmRecord } from '../records.ts';
import type { StateKeeper } from '../state-keeper.ts';
import { BUSY_STATES } from '../state.ts';
import type { ForkJournal } from './fork-journal.ts';

export interface ForkRecoveryDeps {
  inventory: Inventory;
  agent: AgentClient;
  states: StateKeeper;
  logger: Logger;
}

async function undoDiskSplit(deps: ForkRecoveryDeps, source: VmRecord, journal: ForkJournal): Promise<void> {
  if (journal.disks) {
    await deps.agent.undoForkDisks({ forkId: journal.forkId, sourceId: source.id, sourceDisks: source.spec.disks, childIds: journal.childIds, result: journal.disks });
  }
  await deps.agent.undoForkRenames({ forkId: journal.forkId });
}

/** Runs before VMs are re-adopted. Returns what it did, for the task's message. */
export async function recoverFork(deps: ForkRecoveryDeps, journal: ForkJournal): Promise<string> {
  // An agent in its own process outlived the controller and still holds the fork staged: it undoes
  // what had not happened yet (waiting QEMUs, and before the switch-over the disk split and the
  // template). An agent that restarted with the controller holds nothing; the steps below cover it.
  await deps.agent.abortFork({ forkId: journal.forkId }).catch((err: unknown) => deps.logger.warn({ err, forkId: journal.forkId }, 'cannot abort the staged fork on its host'));
  for (const id of journal.childIds) await deps.inventory.deleteVm(id);
  let did = `removed ${journal.childIds.length} unfinished children`;
  let source = await deps.inventory.getVm(journal.sourceId);
  if (!source || !BUSY_STATES.includes(source.state)) {
    if (source && journal.owned) await deps.agent.abortOwnedTarget({ vmId: source.id }).catch(() => undefined);
    await deps.agent.removeForkFiles({ forkId: journal.forkId });
    return did;
  }
  // A fork of a fork that died while making the source's memory its own. An agent that lived on and still
  // holds the target staged drops it and the source runs on; a target that had taken over, or that a
  // restarted agent finds migrated, has the VM; one still waiting for its migration is killed by adoptVm.
  if (journal.owned && source.runtime?.pid !== journal.owned.pid) {
    await deps.agent.abortOwnedTarget({ vmId: source.id }).catch((err: unknown) => deps.logger.warn({ err, vmId: source?.id }, 'cannot abort the make-owned target on its host'));
    const status = (await deps.agent.adoptVm({ vmId: source.id, runtime: journal.owned }).catch(() => ({ status: null }))).status;
    if (status) {
      if (source.runtime) await deps.agent.killStray({ vmId: source.id, runtime: source.runtime });
      source = await deps.states.force(source.id, source.state, null, { runtime: journal.owned });
      did += '; the QEMU its make-owned step had started has the VM (the migration had completed)';
    } else {
      did += '; killed the QEMU its make-owned step had started';
    }
  }
  const replacement = journal.incoming?.[source.id];
  const recordHasReplacement = replacement !== undefined && source.runtime?.pid === replacement.pid;
  const replacementStatus = replacement && !recordHasReplacement ? (await deps.agent.adoptVm({ vmId: source.id, runtime: replacement }).catch(() => ({ status: null }))).status : undefined;
  let status: 'running' | 'paused' | null | undefined;
  if (replacementStatus && replacement && journal.disks) {
    if (source.runtime) await deps.agent.killStray({ vmId: source.id, runtime: source.runtime });
    status = replacementStatus;
    await deps.states.force(source.id, status, 'fork interrupted by a daemon restart after the switch-over', { runtime: replacement, spec: { ...source.spec, disks: journal.disks.source } });
    did += '; adopted the source after its switch-over';
  } else {
    status = source.runtime ? (await deps.agent.adoptVm({ vmId: source.id, runtime: source.runtime }).catch(() => ({ status: null }))).status : undefined;
    if (status && (recordHasReplacement || journal.phase === 'switched')) {
      await deps.states.force(source.id, status, 'fork interrupted by a daemon restart after the switch-over');
      did += '; the source had switched over and runs';
    } else if (status) {
      for (const [vmId, runtime] of Object.entries(journal.incoming ?? {})) await deps.agent.killStray({ vmId, runtime });
      await undoDiskSplit(deps, source, journal);
      await deps.states.force(source.id, status, 'fork interrupted by a daemon restart; the source ran on');
      did += '; undid the disk split';
    } else {
      await undoDiskSplit(deps, source, journal);
      await deps.states.force(source.id, 'stopped', 'fork interrupted by a daemon restart and the source QEMU was gone', { runtime: null });
      did += '; undid the disk split; the source QEMU was gone';
    }
  }
  // Whichever QEMU has the VM now, it is in the state it had before the operation.
  if (status === 'paused' && journal.previousState === 'running') {
    await deps.agent.resumeVm({ vmId: source.id });
    await deps.states.force(source.id, 'running', null);
    did += '; resumed it';
  }
  await deps.agent.removeForkFiles({ forkId: journal.forkId });
  return did;
}
