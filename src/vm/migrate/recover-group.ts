// Crash recovery of a group migration a controller was running when it died,
// from the group's journal (run-group.ts). The group's phase decides:
//   transfer  nothing was started: every member goes back to its source. A
//             member whose migration completed has its destination paused
//             (held): that QEMU is removed first, then the source runs on in
//             the same QEMU (revertOutgoing); the others are rolled back as a
//             single migration is (recover-migration.ts).
//   start     every member had arrived and the starts were being sent: each
//             destination still held is started, and every member is then
//             finished as a single migration is (it runs at its destination);
//             one whose destination is gone goes back to its source.
// Journals of older controllers (no phase) recover member by member.
import type { Logger } from '../../common/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { GroupJournal } from './group-member.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import { recoverMigration } from './recover-migration.ts';

export async function recoverGroup(ctx: EngineContext, journal: GroupJournal | undefined, logger: Logger): Promise<string> {
  const members = journal?.members ?? [];
  if (members.length === 0) return 'nothing to roll back';
  const done: string[] = [];
  for (const m of members) {
    const agents = { source: ctx.fleet.agent(m.sourceHostId), destination: ctx.fleet.agent(m.destinationHostId) };
    const incoming = (await agents.destination.migrationState({ vmId: m.vmId }).catch(() => null))?.incoming ?? null;
    if (journal?.phase === 'start' && incoming?.state === 'held') {
      const started = await agents.destination.startIncoming({ vmId: m.vmId }).then(
        () => true,
        (err: unknown) => {
          logger.warn({ vmId: m.vmId, err: (err as Error).message }, 'cannot start a held group member at its destination');
          return false;
        },
      );
      if (started) {
        done.push(await recoverMigration(ctx, m, logger));
        continue;
      }
    }
    if (journal?.phase !== undefined && m.phase !== 'switched') await sendBack(ctx, m, logger);
    done.push(await recoverMigration(ctx, m, logger));
  }
  return done.join('; ');
}

/** A member not started at its destination: a held destination goes, and a source whose migration completed runs on. */
async function sendBack(ctx: EngineContext, m: MigrateJournal, logger: Logger): Promise<void> {
  const agents = { source: ctx.fleet.agent(m.sourceHostId), destination: ctx.fleet.agent(m.destinationHostId) };
  const state = await agents.destination.migrationState({ vmId: m.vmId }).catch(() => null);
  if (state && state.qemu !== null) return; // it runs there: recoverMigration finishes it forward
  await agents.destination.abortIncoming({ vmId: m.vmId }).catch(() => undefined);
  const source = await agents.source.migrationState({ vmId: m.vmId }).catch(() => null);
  if (source?.qemu && source.outgoing === null && source.qemu.runState === 'postmigrate') {
    const status = await agents.source.revertOutgoing({ vmId: m.vmId, resume: m.previous === 'running' }).then(
      (r) => r.status,
      (err: unknown) => `not reverted: ${(err as Error).message}`,
    );
    logger.warn({ vmId: m.vmId, status }, 'recovery sent a group member back to its source');
  }
}
