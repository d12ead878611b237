// A migration whose source completed (the guest's memory and devices went to
// the destination, the source's QEMU is stopped for good) but whose
// destination's agent stopped answering before it said the guest runs there
// (killed, restarted, or cut off right after the switch-over). The
// destination is the VM now: its QEMU, started detached, holds the guest and
// outlives its agent. So the inventory moves the VM there in one write, in
// state `unknown` (as any VM of an unreachable host), the source lets it go,
// and the task waits (up to the migration's time budget) for the destination
// to answer: its agent then re-adopts the QEMU, which is resumed when the VM
// ran before (a destination whose agent died before it could `cont` holds the
// guest paused). Never marked failed, never restarted at the source. A
// destination still silent at the end of the wait leaves the VM `unknown`:
// the host's re-adoption when it answers finds it (paused; `vm resume` runs
// it).
import { OffshootError, sleep } from '../../common/index.ts';
import type { AgentClient } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { VmRecord } from '../records.ts';
import type { MigrateJournal } from './migrate-journal.ts';

/** Errors that say the destination's agent did not answer (or is a new process that lost the operation), not that the migration failed there. */
const UNANSWERED = new Set(['HOST_UNREACHABLE', 'OPERATION_NOT_FOUND', 'STALE_EPOCH']);

export function isUnanswered(err: unknown): boolean {
  return err instanceof OffshootError && UNANSWERED.has(err.code);
}

/** Moves the VM to the destination in one write, `unknown` until its agent answers. */
export async function recordUnconfirmed(ctx: EngineContext, journal: MigrateJournal, destinationName: string): Promise<VmRecord> {
  const reason = `its migration to ${destinationName} completed at the source, but the agent of ${destinationName} stopped answering before the guest was confirmed there; it is re-adopted when the host answers`;
  const vm = await ctx.states.force(journal.vmId, 'unknown', reason, { hostId: journal.destinationHostId, spec: journal.destinationSpec, runtime: journal.destinationRuntime });
  ctx.logger.warn({ vm: vm.name, host: journal.destinationHostId }, 'VM migrated; its destination does not answer yet');
  return vm;
}

/**
 * Waits until the destination answers and has re-adopted the VM's QEMU (resumed if the VM ran before), then records
 * its state. Answers whether the destination confirmed it within `waitMs`.
 */
export async function confirmAtDestination(ctx: EngineContext, destination: AgentClient, journal: MigrateJournal, waitMs: number, signal?: AbortSignal): Promise<boolean> {
  const runtime = journal.destinationRuntime;
  if (!runtime) return false;
  const deadline = Date.now() + waitMs;
  for (let first = true; first || (Date.now() < deadline && !signal?.aborted); first = false) {
    const adopted = await destination.adoptVm({ vmId: journal.vmId, runtime }).catch((err: unknown) => (isUnanswered(err) ? undefined : { status: null }));
    if (adopted === undefined) {
      if (Date.now() < deadline) await sleep(500);
      continue;
    }
    if (adopted.status === null) {
      // The destination answers but its QEMU is gone: nothing holds the guest any more.
      await ctx.states.force(journal.vmId, 'stopped', 'its QEMU was gone when the destination of its migration answered again', { runtime: null });
      return true;
    }
    let status = adopted.status;
    if (status === 'paused' && journal.previous === 'running') {
      await destination.resumeVm({ vmId: journal.vmId });
      status = 'running';
    }
    await ctx.states.force(journal.vmId, status, null);
    // Its end of the path could not be removed while it did not answer.
    await destination.closePath({ operationId: journal.pathId }).catch(() => undefined);
    ctx.logger.info({ vmId: journal.vmId, status }, 'the destination of a migration answers again: the VM runs there');
    return true;
  }
  return false;
}
