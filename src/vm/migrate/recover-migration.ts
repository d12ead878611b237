// Crash recovery of a migration a controller was running when it died, from
// its journal. The agents in their own processes usually lived on, so first
// the source's migrateOut is asked to stop (a cancel the agent ignores past
// the switch-over) and followed to its end. Then: if the destination runs the
// guest, the migration is finished forward (the inventory moves the VM, the
// source lets it go, the path goes); otherwise it is rolled back (the source
// runs on as it was, the destination and the path are removed). Runs before
// VMs are re-adopted. A migration still queued had moved nothing: its VM
// only returns to its previous state.
import type { Logger } from '../../common/index.ts';
import { follow } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import { rollBackMigration } from './roll-back.ts';
import { runsAtDestination } from './run-migration.ts';
import { finishSource, recordAtDestination } from './switch-over.ts';
import { confirmAtDestination } from './unconfirmed.ts';

export async function recoverMigration(ctx: EngineContext, journal: MigrateJournal, logger: Logger): Promise<string> {
  const agents = { source: ctx.fleet.agent(journal.sourceHostId), destination: ctx.fleet.agent(journal.destinationHostId) };
  const vm = await ctx.inventory.getVm(journal.vmId);
  if (!vm) return 'the VM is gone';
  if (journal.phase === 'queued') {
    if (vm.state === 'migrating') await ctx.states.force(journal.vmId, journal.previous, 'its migration was interrupted while queued');
    return 'it was queued: nothing had moved';
  }
  if (vm.hostId === journal.destinationHostId) {
    // The inventory had moved it: only the source's leftovers remain (and, if its destination had not answered, its confirmation there).
    await finishSource(ctx, agents, journal);
    if (journal.unconfirmed && vm.state === 'unknown' && (await confirmAtDestination(ctx, agents.destination, journal, 2_000))) return 'the VM had moved to its destination, which answers again and runs it; its source was cleaned';
    return `the VM had moved to its destination; its source was cleaned`;
  }
  if (journal.phase === 'transfer' || journal.phase === 'switched') {
    const found = await agents.source.getOperation({ operationId: journal.migrateOperationId, afterSeq: 0, waitMs: 0 }).catch(() => null);
    if (found?.operation.state === 'running') {
      await agents.source.cancelOperation({ operationId: journal.migrateOperationId }).catch(() => undefined);
      await follow(agents.source, journal.migrateOperationId).catch(() => undefined);
    }
  }
  if (journal.destinationRuntime && (await runsAtDestination(agents.destination, journal.vmId))) {
    const status = await agents.destination.vmStatus({ vmId: journal.vmId }).catch(() => ({ status: null }));
    await recordAtDestination(ctx, journal, { runtime: journal.destinationRuntime, running: status.status !== 'paused' });
    await finishSource(ctx, agents, journal);
    logger.warn({ vm: vm.name }, 'finished an interrupted migration: the VM runs at its destination');
    return 'finished: the VM runs at its destination';
  }
  const did = await rollBackMigration(agents, journal, logger);
  if (vm.state === 'migrating') await ctx.states.force(journal.vmId, journal.previous, 'its migration was interrupted and rolled back');
  logger.warn({ vm: vm.name, did }, 'rolled back an interrupted migration: the VM stays at its source');
  return `rolled back (${did.join(', ')}): the VM stays at its source`;
}
