// Live migration of a VM to another host, phase by phase:
//   plan      hosts, addresses, what each disk does (plan-migration.ts)
//   path      the isolated path and its one-time key (data-path.ts)
//   prepare   the destination waits with its target disks exported (transfer.ts)
//   transfer  disk mirrors and memory pre-copy / post-copy from the source (transfer.ts)
//   switched  the guest runs at the destination: the inventory moves the VM in
//             one write, the source lets it go, the path goes (switch-over.ts)
// Until the destination runs the guest the source is the VM: a failure or a
// cancel rolls back (roll-back.ts) and the VM runs on at the source, as it
// was. The destination is watched while the source transfers: if its agent
// stops answering (or its QEMU fails) before the switch-over, the transfer is
// stopped and rolled back rather than finished into a host nobody controls
// (the destination's agent, once back, has its leftovers reaped). After the
// switch-over a destination that does not answer keeps the VM (unconfirmed.ts).
// Each phase is journaled before it acts, for recovery (recover-migration.ts).
import { OffshootError } from '../../common/index.ts';
import type { IncomingResult, MigrateOutResult } from '../../protocol/index.ts';
import { newOperationId } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { HostRecord } from '../hosts/index.ts';
import type { VmRecord } from '../records.ts';
import type { VmState } from '../state.ts';
import type { TaskContext } from '../tasks.ts';
import { openDataPath } from './data-path.ts';
import type { OpenedPath } from './data-path.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import type { MigrateRequest } from './migrate-request.ts';
import { tuningOf } from './migrate-request.ts';
import { planMigration } from './plan-migration.ts';
import type { MigrationPlan } from './plan-migration.ts';
import { rollBackMigration } from './roll-back.ts';
import { finishSource, recordAtDestination } from './switch-over.ts';
import { awaitDestination, prepareDestination, transferVm } from './transfer.ts';
import { confirmAtDestination, isUnanswered, recordUnconfirmed } from './unconfirmed.ts';

export interface MigrateResult {
  vm: string;
  from: string;
  to: string;
  /** QEMU's figure: the guest stopped at the source until it ran at the destination. */
  downtimeMs: number | null;
  totalMs: number;
  /** The same two figures, where the metrics and the console read them, and when each phase ended (ms from the start: `arrivedMs` the destination reported the guest running, `recordedMs` the inventory named the destination, `sourceGoneMs` the source's QEMU and files went, `pathClosedMs` the path went, the rest to `totalMs` is the source host's garbage collection; QEMU's own migration time; the guest's stop at the source to its resume at the destination, by the QEMUs' STOP and RESUME events). */
  timings: { downtimeMs: number | null; totalMs: number; plannedMs: number; pathMs: number; preparedMs: number; transferredMs: number; arrivedMs: number; recordedMs: number; sourceGoneMs: number; pathClosedMs: number; qemuTotalMs: number | null; mirrorMs: number | null; stopToResumeMs: number | null };
  /**
   * Where the time went, ms by phase: the controller's phases (they add up to `totalMs`: `arrival` the destination's
   * word that the guest runs there after the source's end, `cleanup` the source's QEMU and files, the path and the
   * garbage collection), and each host's own steps (null when that host did not report them).
   */
  phasesMs: MigrationPhases;
  memoryBytes: number;
  memoryTotalBytes: number;
  /** Data bytes of the copied disks (allocated in the layers mirrored); `diskMirroredBytes` is the mirrors' total, holes included. */
  diskBytes: number;
  diskMirroredBytes: number;
  passes: number;
  postcopy: boolean;
  postcopyReason: string | null;
  converged: boolean;
  /** Disks copied (and how: `top` only the delta over bases the destination holds, `full` the whole chain), kept (shared), and the bases not sent (with their bytes at the source). */
  storage: { copied: string[]; shared: string[]; sync: Record<string, 'top' | 'full'>; skipped: MigrationPlan['skipped'] };
  /** The isolated path the streams used (gone now), and the bytes it carried from the source. */
  path: OpenedPath & { bytesSent: number | null };
  resumedAt: string | null;
  /** Whether the destination's agent confirmed the guest there (false: it stopped answering after the switch-over; the VM is recorded there, `unknown` until it answers). */
  destinationConfirmed: boolean;
}

export interface MigrationPhases {
  plan: number;
  path: number;
  prepare: number;
  transfer: number;
  arrival: number;
  record: number;
  cleanup: number;
  /** The destination's preparation: disks, qemuStart, creds, capabilities, exports, listen. */
  destination: Record<string, number> | null;
  /** The source's migrateOut: creds, mirrors, configure, memory, switchOver, finish. */
  source: Record<string, number> | null;
}

export async function runMigration(ctx: EngineContext, vm: VmRecord, previous: VmState, source: HostRecord, destination: HostRecord, request: MigrateRequest, task: TaskContext, signal: AbortSignal): Promise<MigrateResult> {
  const t0 = performance.now();
  const agents = { source: ctx.fleet.agent(source.id), destination: ctx.fleet.agent(destination.id) };
  const tuning = tuningOf(request);
  await task.progress(0.01, `planning the move of ${vm.name} to ${destination.name}`);
  const contentIds = (await ctx.contentIdsOf?.(vm.spec.disks.flatMap((d) => d.backing))) ?? {};
  const plan = await planMigration(vm, source, destination, agents, request, contentIds);
  const at = { planned: performance.now() - t0, path: 0, prepared: 0, transferred: 0, arrived: 0, recorded: 0, sourceGone: 0, pathClosed: 0 };
  const journal: MigrateJournal = {
    vmId: vm.id,
    phase: 'path',
    previous,
    sourceHostId: source.id,
    destinationHostId: destination.id,
    pathId: newOperationId(),
    prepareOperationId: newOperationId(),
    awaitOperationId: newOperationId(),
    migrateOperationId: newOperationId(),
    destinationSpec: plan.destinationSpec,
    destinationRuntime: null,
  };
  await task.journal(journal);
  let outcome: MigrateOutResult | undefined;
  let path: OpenedPath | undefined;
  let destinationPhases: Record<string, number> | null = null;
  // The destination's outcome, followed from the end of prepare on; its failure before the switch-over stops the transfer.
  let arrival: Promise<IncomingResult> | undefined;
  let destinationFailure: Error | undefined;
  const transferAbort = new AbortController();
  const forwardAbort = () => transferAbort.abort(signal.reason);
  signal.addEventListener('abort', forwardAbort, { once: true });
  try {
    signal.throwIfAborted();
    await task.progress(0.03, `opening an isolated path between ${source.name} and ${destination.name}`);
    path = await openDataPath(agents, journal.pathId, { source: plan.sourceAddress, destination: plan.destinationAddress }, plan.slotsInUse);
    at.path = performance.now() - t0;
    await ctx.faults?.('migrate.path');
    signal.throwIfAborted();
    journal.phase = 'prepare';
    await task.journal(journal);
    await task.progress(0.05, `${destination.name} prepares: ${plan.incoming.length} disk(s) to receive, a QEMU waiting on ${path.destinationAddress}`);
    const postcopy = tuning.postcopy !== 'never';
    const target = await prepareDestination(agents.destination, vm, plan, journal, { postcopy, multifdChannels: postcopy ? 1 : tuning.multifdChannels, tls: tuning.tls, resume: previous === 'running' });
    journal.destinationRuntime = target.runtime;
    destinationPhases = target.phasesMs ?? null;
    at.prepared = performance.now() - t0;
    arrival = awaitDestination(agents.destination, journal);
    arrival.catch((err: unknown) => {
      destinationFailure = err as Error;
      if (!outcome) transferAbort.abort(err);
    });
    journal.phase = 'transfer';
    await task.journal(journal);
    await ctx.faults?.('migrate.transfer');
    await task.progress(0.1, plan.mirrors.length ? 'mirroring the disks' : 'copying memory');
    transferAbort.signal.throwIfAborted();
    outcome = await transferVm(agents.source, vm, plan, journal, target, tuning, task, transferAbort.signal);
    at.transferred = performance.now() - t0;
  } catch (caught) {
    // The source's migration failed, or the destination did first: unless the destination already runs the guest (a failure after the switch-over), roll back.
    const err = destinationFailure && transferAbort.signal.aborted && transferAbort.signal.reason === destinationFailure ? destinationError(destinationFailure, destination.name, vm.name) : caught;
    if (!(await runsAtDestination(agents.destination, vm.id))) {
      const did = await rollBackMigration(agents, journal, ctx.logger);
      await ctx.states.settle(vm.id, ['migrating'], previous, null);
      ctx.logger.warn({ vm: vm.name, to: destination.name, err: (err as Error).message, did }, 'migration rolled back; the VM runs on at its source');
      throw err;
    }
    ctx.logger.warn({ vm: vm.name, err: (err as Error).message }, 'the source reported a failure after the guest ran at the destination: the migration completes');
  } finally {
    signal.removeEventListener('abort', forwardAbort);
  }
  let incoming: IncomingResult | null;
  try {
    incoming = await (arrival ?? awaitDestination(agents.destination, journal));
  } catch (err) {
    if (outcome && isUnanswered(err)) {
      // The source completed and the destination holds the guest, but its agent does not answer: the VM is there.
      incoming = null;
    } else {
      // The source completed but the destination did not run the guest: the destination goes first (so the
      // guest never runs twice), then the source's QEMU, paused in `postmigrate`, takes the guest back
      // (revertOutgoing: `cont` re-activates its disks), as a group does before its start.
      await rollBackMigration(agents, journal, ctx.logger);
      const reverted = await agents.source.revertOutgoing({ vmId: vm.id, resume: previous === 'running' }).then(
        () => true,
        (revertErr: unknown) => {
          ctx.logger.error({ vm: vm.name, err: (revertErr as Error).message }, 'the source cannot take back a guest its destination did not run');
          return false;
        },
      );
      if (reverted) {
        await ctx.states.settle(vm.id, ['migrating'], previous, null);
        throw new OffshootError('MIGRATION_FAILED', `VM "${vm.name}" was sent to ${destination.name} but did not run there (${(err as Error).message}); it runs on at ${source.name}`, { vm: vm.name, step: 'destination', reverted: true }, 500, { cause: err });
      }
      await ctx.states.settle(vm.id, ['migrating'], 'failed', `its migration to ${destination.name} completed at the source but the destination did not run it: ${(err as Error).message}`, { runtime: null });
      throw new OffshootError('MIGRATION_FAILED', `VM "${vm.name}" was sent to ${destination.name} but did not run there: ${(err as Error).message}`, { vm: vm.name, step: 'destination' }, 500, { cause: err });
    }
  }
  at.arrived = performance.now() - t0;
  journal.phase = 'switched';
  if (!incoming) journal.unconfirmed = true;
  await task.journal({ ...journal, ...(outcome ? { outcome } : {}) });
  await task.progress(0.97, incoming ? `${vm.name} runs at ${destination.name}; removing it from ${source.name}` : `${vm.name} went to ${destination.name}, whose agent does not answer; removing it from ${source.name}`);
  if (incoming) await recordAtDestination(ctx, journal, incoming);
  else await recordUnconfirmed(ctx, journal, destination.name);
  at.recorded = performance.now() - t0;
  await ctx.faults?.('migrate.switched');
  const counters = await finishSource(ctx, agents, journal, (step) => (at[step === 'source-gone' ? 'sourceGone' : 'pathClosed'] = performance.now() - t0));
  if (!incoming) {
    await task.progress(0.98, `waiting for ${destination.name} to answer and re-adopt ${vm.name}`);
    const confirmed = await confirmAtDestination(ctx, agents.destination, journal, request.timeoutS * 1000);
    incoming = confirmed ? { runtime: journal.destinationRuntime as IncomingResult['runtime'], resumedAt: null, running: previous === 'running' } : null;
  }
  const totalMs = Math.round(performance.now() - t0);
  const span = (from: number, to: number) => Math.max(0, Math.round(to - from));
  const phasesMs: MigrationPhases = {
    plan: span(0, at.planned),
    path: span(at.planned, at.path),
    prepare: span(at.path, at.prepared),
    transfer: span(at.prepared, at.transferred),
    arrival: span(at.transferred, at.arrived),
    record: span(at.arrived, at.recorded),
    cleanup: span(at.recorded, totalMs),
    destination: destinationPhases,
    source: outcome?.phasesMs ?? null,
  };
  return {
    vm: vm.name,
    from: source.name,
    to: destination.name,
    downtimeMs: outcome?.downtimeMs ?? null,
    totalMs,
    timings: { downtimeMs: outcome?.downtimeMs ?? null, totalMs, plannedMs: Math.round(at.planned), pathMs: Math.round(at.path), preparedMs: Math.round(at.prepared), transferredMs: Math.round(at.transferred), arrivedMs: Math.round(at.arrived), recordedMs: Math.round(at.recorded), sourceGoneMs: Math.round(at.sourceGone), pathClosedMs: Math.round(at.pathClosed), qemuTotalMs: outcome?.totalTimeMs ?? null, mirrorMs: outcome?.mirrorMs === null || outcome?.mirrorMs === undefined ? null : Math.round(outcome.mirrorMs), stopToResumeMs: stopToResume(outcome?.stoppedAt ?? null, incoming?.resumedAt ?? null) },
    phasesMs,
    memoryBytes: outcome?.memoryBytes ?? 0,
    memoryTotalBytes: outcome?.memoryTotalBytes ?? 0,
    diskBytes: outcome?.diskBytes ?? 0,
    diskMirroredBytes: outcome?.diskMirroredBytes ?? outcome?.diskBytes ?? 0,
    passes: outcome?.passes ?? 0,
    postcopy: outcome?.postcopy ?? false,
    postcopyReason: outcome?.postcopyReason ?? null,
    converged: outcome?.converged ?? false,
    storage: { copied: plan.incoming.map((d) => d.id), shared: plan.shared, sync: Object.fromEntries(plan.mirrors.map((m) => [m.node, m.sync])), skipped: plan.skipped },
    path: { ...(path as OpenedPath), bytesSent: counters?.txBytes ?? null },
    resumedAt: incoming?.resumedAt ?? null,
    destinationConfirmed: incoming !== null,
  };
}

/** The guest's stop at the source to its resume at the destination (the hosts' clocks: one machine's in a lab), ms. */
function stopToResume(stoppedAt: string | null, resumedAt: string | null): number | null {
  return stoppedAt && resumedAt ? Date.parse(resumedAt) - Date.parse(stoppedAt) : null;
}

/** Why the destination stopped the transfer: its own migration error, or its agent that stopped answering. */
function destinationError(err: Error, destination: string, vm: string): Error {
  if (err instanceof OffshootError && err.code === 'MIGRATION_FAILED') return err;
  return new OffshootError('MIGRATION_FAILED', `the destination ${destination} failed during the migration of VM "${vm}" (${err.message}); the VM runs on at its source`, { vm, step: 'destination' }, 500, { cause: err });
}

/** Whether the destination's agent runs the VM's guest (its incoming migration completed). */
export async function runsAtDestination(destination: { migrationState: (r: { vmId: string }) => Promise<{ qemu: unknown; incoming: { state: string } | null }> }, vmId: string): Promise<boolean> {
  const state = await destination.migrationState({ vmId }).catch(() => null);
  return state !== null && (state.qemu !== null || state.incoming?.state === 'running');
}
