// The commit of a group migration (run-group.ts's last phases), once every
// member going is held at its pre-switchover point:
//   continue  all held members are continued at once; each completes its
//             migration and its destination keeps the guest paused, disks
//             inactive (prepareIncoming with holdAfter): the member `arrived`
//   check     every arrived destination must still hold its guest (a QEMU
//             killed since its arrival is caught here, before anything starts)
//   start     when every member arrived, the journal says `start` (from here
//             recovery finishes forward) and all destinations are started at
//             once (startIncoming); each member is then recorded at its
//             destination and its source let go (switch-over.ts)
//   revert    a member that failed before the start (its source or its
//             destination died, its migration failed), in consistent mode,
//             sends every member back: each destination's paused QEMU is
//             removed first, then its source, in `postmigrate`, runs on in the
//             same QEMU (revertOutgoing: QEMU re-activates its disks) — the
//             guest never ran at a destination, so nothing is lost. In
//             available mode only the failed members go back.
// A destination that fails at its start has not run the guest either: its
// member is reverted the same way, and the group is reported split.
import { OffshootError } from '../../common/index.ts';
import type { Logger } from '../../common/index.ts';
import type { IncomingResult } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import { closeDataPath } from './data-path.ts';
import type { Member } from './group-member.ts';
import { requireMemberState } from './group-member.ts';
import { rollBackMigration } from './roll-back.ts';
import { finishSource, recordAtDestination } from './switch-over.ts';
import { awaitDestination } from './transfer.ts';

/** Continues every held member at once and waits until each has arrived (or failed). */
export async function continueAll(ctx: EngineContext, going: Member[]): Promise<void> {
  await Promise.all(
    going.map(async (m) => {
      if (m.state !== 'held') return;
      await m.agents.source.continueMigration({ vmId: m.vm.id }).catch((err: unknown) => ctx.logger.warn({ vm: m.vm.name, err: (err as Error).message }, 'cannot continue a held member'));
      m.continuedAt = performance.now();
      m.at.continued = Date.now();
      m.state = 'continued';
    }),
  );
  await Promise.all(going.map((m) => arrive(ctx.logger, m)));
}

/** A continued member's migration ends: its destination holds the guest paused (arrived), or it failed. */
async function arrive(logger: Logger, m: Member): Promise<void> {
  requireMemberState(m, ['continued'], 'await the arrival of');
  // Both ends at once (the destination's outcome need not wait for the source's report).
  const source = (m.out as NonNullable<Member['out']>).then(
    (outcome) => void (m.outcome = outcome),
    (err: unknown) => {
      // The destination decides: a source that lost its answer may have completed all the same.
      logger.warn({ vm: m.vm.name, err: (err as Error).message }, 'the source of a group member reported a failure after its continue');
      m.error = err as Error;
    },
  );
  const destination = awaitDestination(m.agents.destination, m.journal).then(
    (incoming) => {
      m.at.arrived = Date.now();
      m.incoming = incoming;
      return true as const;
    },
    (err: unknown) => err as Error,
  );
  const [, arrived] = await Promise.all([source, destination]);
  if (arrived === true) {
    m.state = (m.incoming as IncomingResult).running ? 'moved' : 'arrived';
  } else {
    m.error ??= arrived;
    m.state = 'failed';
  }
}

/** Just before the start: a member whose destination no longer holds its guest (its QEMU died since it arrived) has failed. */
export async function checkArrived(arrived: Member[]): Promise<void> {
  await Promise.all(
    arrived.map(async (m) => {
      requireMemberState(m, ['arrived'], 'check the destination of');
      const state = await m.agents.destination.migrationState({ vmId: m.vm.id }).catch((err: unknown) => (err as Error).message);
      const incoming = typeof state === 'string' ? null : state.incoming;
      // Held, and its QEMU answers (a killed one whose exit the agent has not seen yet does not).
      if (incoming?.state === 'held' && incoming.runState !== null) return;
      m.state = 'failed';
      m.error = new OffshootError('MIGRATION_FAILED', `the destination ${m.destination.name} of ${m.vm.name} no longer holds its guest (${typeof state === 'string' ? state : `its incoming migration is ${incoming?.state ?? 'gone'}`})`, { vm: m.vm.name, step: 'start' }, 500);
    }),
  );
}

/** Starts every arrived member's destination at once; each started one is recorded there and its source let go, one that does not start goes back to its source. */
export async function startAll(ctx: EngineContext, arrived: Member[]): Promise<void> {
  await Promise.all(
    arrived.map(async (m) => {
      try {
        m.at.startSent = Date.now();
        m.incoming = await m.agents.destination.startIncoming({ vmId: m.vm.id });
      } catch (err) {
        m.error = err as Error;
        m.state = 'failed';
      }
    }),
  );
  await Promise.all(
    arrived.map(async (m) => {
      if (m.state === 'failed') return revert(ctx, m);
      m.journal.phase = 'switched';
      await recordAtDestination(ctx, m.journal, m.incoming as NonNullable<Member['incoming']>);
      m.state = 'moved';
      await finishSource(ctx, m.agents, m.journal);
    }),
  );
}

/**
 * Sends a member back to its source after its continue (the guest never ran at its destination): the
 * destination's QEMU goes first, then the source runs on in the same QEMU; the path goes. A member whose
 * source migration did not complete is rolled back as a single migration is.
 */
export async function revert(ctx: EngineContext, m: Member): Promise<void> {
  const failed = m.state === 'failed';
  // A held destination never runs the guest unless it is started (startIncoming): the source may run on
  // even when the destination's agent cannot be reached now (its paused QEMU is reaped when it returns).
  await m.agents.destination.abortIncoming({ vmId: m.vm.id }).catch((err: unknown) => ctx.logger.warn({ vm: m.vm.name, err: (err as Error).message }, 'cannot remove the destination of a group member now'));
  const status = await m.agents.source.revertOutgoing({ vmId: m.vm.id, resume: m.previous === 'running' }).then(
    (r) => r.status,
    (err: unknown) => `not reverted (${(err as Error).message})`,
  );
  // Not completed at the source (stopped before its switch-over): a single migration's roll-back.
  if (status.startsWith('not reverted')) await rollBackMigration(m.agents, m.journal, ctx.logger);
  else await closeDataPath(m.agents, m.journal.pathId);
  await ctx.states.settle(m.vm.id, ['migrating'], m.previous, null).catch(() => undefined);
  ctx.logger.warn({ vm: m.vm.name, status }, 'group member sent back to its source');
  if (!failed) m.error = null;
  m.state = 'stayed';
}
