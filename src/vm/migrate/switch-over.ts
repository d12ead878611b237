// Phase `switched` of a migration: the guest runs at the destination. The
// inventory moves the VM to its new host in one write (host, spec with its
// disks there, runtime), then the source lets it go (its old QEMU ends, its
// RAM file and its copied local disks go), the path is removed and the
// source's garbage (bases and templates nothing uses now) collected. Every
// step after the inventory write is idempotent, so recovery repeats them.
import type { AgentClient, IncomingResult, LinkCountersData } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { VmRecord } from '../records.ts';
import { closeDataPath } from './data-path.ts';
import type { MigrateJournal } from './migrate-journal.ts';

/**
 * Records the VM at the destination (one write), in the state it had before (running or paused). The guest
 * runs there whatever the record said meanwhile (a source host that missed its lease made it `unknown`), so
 * the write is unconditional.
 */
export async function recordAtDestination(ctx: EngineContext, journal: MigrateJournal, incoming: Pick<IncomingResult, 'runtime' | 'running'>): Promise<VmRecord> {
  const state = incoming.running ? 'running' : 'paused';
  const vm = await ctx.states.force(journal.vmId, state, null, { hostId: journal.destinationHostId, spec: journal.destinationSpec, runtime: incoming.runtime });
  ctx.logger.info({ vm: vm.name, host: journal.destinationHostId }, 'VM migrated');
  return vm;
}

/** After the inventory names the destination: the source's QEMU and files go, and the path; `mark` hears when each step ended. */
export async function finishSource(ctx: EngineContext, agents: { source: AgentClient; destination: AgentClient }, journal: MigrateJournal, mark?: (step: 'source-gone' | 'path-closed') => void): Promise<LinkCountersData | null> {
  // The source's QEMU and files, and the path (no stream uses it now), go at once.
  const [, counters] = await Promise.all([
    agents.source
      .finishOutgoing({ vmId: journal.vmId })
      .catch((err: unknown) => ctx.logger.warn({ vmId: journal.vmId, err: (err as Error).message }, 'cannot remove the source of a migrated VM now; its host reaps it when reconciled'))
      .finally(() => mark?.('source-gone')),
    closeDataPath(agents, journal.pathId).finally(() => mark?.('path-closed')),
  ]);
  await ctx.collectGarbage(journal.sourceHostId).catch(() => undefined);
  return counters;
}
