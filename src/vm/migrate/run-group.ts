// Group migration (issue 13): several VMs move together, with one
// coordinated switch-over. Phase by phase:
//   plan      every member is planned as a single migration is (plan-migration.ts);
//             a member that cannot be planned refuses the whole group, nothing moved
//   path      each member's isolated path, opened one after another (each avoids
//             the slots the ones before took)
//   prepare   every destination waits with its target disks exported (in parallel)
//   transfer  every member's pre-copy runs at once with `hold`: its source stops
//             at QEMU's pre-switchover point (guest stopped, disk mirrors
//             completed) and waits; meanwhile the pacer (group-pacing.ts) lowers
//             the bandwidth of members that would get there well before the
//             slowest, so that all are held within about the window
//   commit    when every member is held, all are continued at once
//             (continueMigration); each destination runs its guest as soon as its
//             migration completed (the agent resumes it), then each member is
//             recorded at its destination and its source let go (switch-over.ts)
// Before the commit a failure of a member, or a cancel, in `consistent` mode
// stops every member and rolls each back as a single migration is
// (roll-back.ts): all run on at their sources, the destinations and paths go.
// In `available` mode only the failed member is rolled back; the others are
// continued once every member is held or failed, and the result says which
// moved. Post-copy is never used (a member in post-copy has switched alone).
// The journal holds every member's migration journal, so a controller that
// died midway recovers each member as a single migration (recover-migration.ts).
import { OffshootError } from '../../common/index.ts';
import type { AgentClient, IncomingResult, MigrateOutResult, MigrationTuning } from '../../protocol/index.ts';
import { newOperationId, runOperation } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { HostRecord } from '../hosts/index.ts';
import type { VmRecord } from '../records.ts';
import type { VmState } from '../state.ts';
import type { TaskContext } from '../tasks.ts';
import { openDataPath } from './data-path.ts';
import type { OpenedPath } from './data-path.ts';
import { paceGroup } from './group-pacing.ts';
import type { GroupMigrateRequest, GroupMode } from './group-request.ts';
import { groupTuningOf } from './group-request.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import type { MigrationPlan } from './plan-migration.ts';
import { planMigration } from './plan-migration.ts';
import { rollBackMigration } from './roll-back.ts';
import { runsAtDestination } from './run-migration.ts';
import { finishSource, recordAtDestination } from './switch-over.ts';
import type { MigrationProgress } from './transfer.ts';
import { awaitDestination, prepareDestination } from './transfer.ts';

export interface GroupMember {
  vm: VmRecord;
  previous: VmState;
  source: HostRecord;
  destination: HostRecord;
}

export interface GroupJournal {
  mode: GroupMode;
  members: MigrateJournal[];
}

export type GroupMemberState = 'planned' | 'copying' | 'held' | 'continued' | 'moved' | 'stayed' | 'failed';

export interface GroupMemberResult {
  vm: string;
  from: string;
  to: string;
  /** moved: it runs at its destination; stayed: it runs on at its source; failed: it failed after the commit and runs nowhere. */
  state: 'moved' | 'stayed' | 'failed';
  /** QEMU's figure: the guest stopped at the source until the migration completed (the hold included). */
  downtimeMs: number | null;
  /** How long it was held at its pre-switchover point waiting for the others (controller's clock). */
  heldMs: number | null;
  /** The lowest bandwidth cap the pacer gave it (null: never slowed). */
  pacedBytesPerSecond: number | null;
  resumedAt: string | null;
  error: { code: string; message: string } | null;
}

export interface GroupMigrateResult {
  mode: GroupMode;
  moved: string[];
  stayed: string[];
  /** Last member resumed minus first (wall-clock of their destinations' RESUME events); null when fewer than one resumed. */
  spreadMs: number | null;
  /** Last member held minus first (controller's clock): the longest extra stop the barrier cost a member. */
  heldSpreadMs: number | null;
  totalMs: number;
  members: GroupMemberResult[];
}

interface Member extends GroupMember {
  agents: { source: AgentClient; destination: AgentClient };
  plan: MigrationPlan;
  journal: MigrateJournal;
  controller: AbortController;
  state: GroupMemberState;
  path: OpenedPath | null;
  prepared: boolean;
  progress: MigrationProgress | null;
  speed: number;
  /** The highest bandwidth its progress showed. */
  peak: number;
  slowest: number | null;
  heldAt: number | null;
  continuedAt: number | null;
  out: Promise<MigrateOutResult> | null;
  outcome: MigrateOutResult | null;
  incoming: IncomingResult | null;
  error: Error | null;
}

const PACE_MS = 500;

function errorOf(err: Error | null): { code: string; message: string } | null {
  if (!err) return null;
  return { code: err instanceof OffshootError ? err.code : 'INTERNAL', message: err.message };
}

export async function runGroupMigration(ctx: EngineContext, group: GroupMember[], request: GroupMigrateRequest, task: TaskContext, signal: AbortSignal): Promise<GroupMigrateResult> {
  const t0 = performance.now();
  const tuning = groupTuningOf(request);
  const names = group.map((g) => g.vm.name).join(', ');
  await task.progress(0.01, `planning the moves of ${names}`);
  const members: Member[] = [];
  try {
    for (const g of group) {
      const agents = { source: ctx.fleet.agent(g.source.id), destination: ctx.fleet.agent(g.destination.id) };
      const plan = await planMigration(g.vm, g.source, g.destination, agents, { ...request, postcopy: 'never' });
      const journal: MigrateJournal = { vmId: g.vm.id, phase: 'path', previous: g.previous, sourceHostId: g.source.id, destinationHostId: g.destination.id, pathId: newOperationId(), prepareOperationId: newOperationId(), awaitOperationId: newOperationId(), migrateOperationId: newOperationId(), destinationSpec: plan.destinationSpec, destinationRuntime: null };
      members.push({ ...g, agents, plan, journal, controller: new AbortController(), state: 'planned', path: null, prepared: false, progress: null, speed: tuning.maxBandwidthBytesPerSecond, peak: 0, slowest: null, heldAt: null, continuedAt: null, out: null, outcome: null, incoming: null, error: null });
    }
  } catch (err) {
    // Nothing moved yet: every member is as it was.
    for (const g of group) await ctx.states.settle(g.vm.id, ['migrating'], g.previous, null).catch(() => undefined);
    throw err;
  }
  const save = () => task.journal({ mode: request.mode, members: members.map((m) => m.journal) } satisfies GroupJournal);
  await save();

  let committed = false;
  const stopAll = (reason: unknown) => {
    if (committed) return;
    for (const m of members) m.controller.abort(reason);
  };
  const onCancel = () => stopAll(signal.reason);
  signal.addEventListener('abort', onCancel, { once: true });
  const fail = (m: Member, err: unknown) => {
    m.state = 'failed';
    m.error = err as Error;
    if (request.mode === 'consistent') stopAll(new OffshootError('TASK_CANCELLED', `the group's migration stops: ${m.vm.name} failed (${(err as Error).message})`, { vm: m.vm.name }, 409));
  };

  // path: one after another, each avoiding the slots taken before.
  await task.progress(0.03, `opening ${members.length} isolated path(s)`);
  const taken: number[] = [];
  for (const m of members) {
    if (m.controller.signal.aborted) break;
    try {
      m.path = await openDataPath(m.agents, m.journal.pathId, { source: m.plan.sourceAddress, destination: m.plan.destinationAddress }, [...m.plan.slotsInUse, ...taken]);
      taken.push(m.path.slot);
      m.journal.phase = 'prepare';
    } catch (err) {
      fail(m, err);
    }
  }
  await save();

  // prepare + transfer, every member at once, until each is held at its switch-over (or failed).
  let lastProgress = 0;
  const pacer = setInterval(() => {
    const copying = members.filter((m) => m.state === 'copying' && m.progress);
    // Each member's ETA at the best bandwidth it has shown (its paced bandwidth would make it look slow and be released again).
    for (const m of copying) m.peak = Math.max(m.peak, m.progress?.bandwidthBytesPerSecond ?? 0);
    const speeds = paceGroup(copying.map((m) => ({ vmId: m.vm.id, ...(m.progress as MigrationProgress), bandwidthBytesPerSecond: m.peak })), { maxBytesPerSecond: tuning.maxBandwidthBytesPerSecond, windowMs: request.windowMs });
    for (const m of copying) {
      const speed = speeds.get(m.vm.id);
      if (speed === undefined || Math.abs(speed - m.speed) < m.speed * 0.1) continue;
      m.speed = speed;
      if (speed < tuning.maxBandwidthBytesPerSecond) m.slowest = Math.min(m.slowest ?? speed, speed);
      m.agents.source.setMigrationSpeed({ vmId: m.vm.id, maxBandwidthBytesPerSecond: speed }).catch(() => undefined);
    }
    const held = members.filter((m) => m.state === 'held').length;
    const now = Date.now();
    if (now - lastProgress < 1_000) return;
    lastProgress = now;
    const detail = { members: members.map((m) => ({ vm: m.vm.name, state: m.state, phase: m.progress?.phase ?? null, remainingBytes: m.progress?.remainingBytes ?? null, bandwidthBytesPerSecond: m.speed })) };
    void task.progress(0.1 + (0.8 * held) / members.length, `${held} of ${members.length} member(s) held at the switch-over`, detail).catch(() => undefined);
  }, PACE_MS);
  try {
    await Promise.all(members.map((m) => (m.path && !m.controller.signal.aborted ? toHold(m, tuning).catch((err: unknown) => fail(m, err)) : undefined)));
  } finally {
    clearInterval(pacer);
  }

  const failed = members.filter((m) => m.state === 'failed' || (m.state !== 'held' && m.state !== 'continued'));
  if (signal.aborted || (request.mode === 'consistent' && failed.length > 0) || failed.length === members.length) {
    signal.removeEventListener('abort', onCancel);
    stopAll(signal.reason ?? new OffshootError('TASK_CANCELLED', 'the group migration stops', {}, 409));
    await Promise.all(members.map((m) => undo(ctx, m)));
    if (signal.aborted) throw signal.reason;
    const first = members.find((m) => m.error && !(m.error instanceof OffshootError && m.error.code === 'TASK_CANCELLED')) ?? failed[0];
    throw new OffshootError('GROUP_MIGRATION_FAILED', `the group migration of ${names} stopped before its switch-over: ${first?.vm.name} failed (${first?.error?.message ?? 'unknown'}); every member runs on at its source`, { mode: request.mode, failed: failed.map((m) => ({ vm: m.vm.name, error: errorOf(m.error) })) }, 500, { cause: first?.error });
  }
  // available: the failed members are rolled back, the others go on.
  await Promise.all(failed.map((m) => undo(ctx, m)));

  // commit: every held member is continued at once; from here a cancel is too late.
  if (signal.aborted) {
    await Promise.all(members.map((m) => undo(ctx, m)));
    throw signal.reason;
  }
  committed = true;
  signal.removeEventListener('abort', onCancel);
  const going = members.filter((m) => m.state === 'held' || m.state === 'continued');
  await task.progress(0.9, `switching ${going.map((m) => m.vm.name).join(', ')} over together`);
  await ctx.faults?.('migrate-group.commit');
  await Promise.all(
    going.map(async (m) => {
      if (m.state !== 'held') return;
      await m.agents.source.continueMigration({ vmId: m.vm.id }).catch((err: unknown) => ctx.logger.warn({ vm: m.vm.name, err: (err as Error).message }, 'cannot continue a held member'));
      m.continuedAt = performance.now();
      m.state = 'continued';
    }),
  );
  await Promise.all(going.map((m) => finish(ctx, m)));
  await save();

  const moved = members.filter((m) => m.state === 'moved');
  const times = moved.map((m) => (m.incoming?.resumedAt ? Date.parse(m.incoming.resumedAt) : null)).filter((t): t is number => t !== null);
  const heldTimes = going.map((m) => m.heldAt).filter((t): t is number => t !== null);
  const result: GroupMigrateResult = {
    mode: request.mode,
    moved: moved.map((m) => m.vm.name),
    stayed: members.filter((m) => m.state === 'stayed').map((m) => m.vm.name),
    spreadMs: times.length ? Math.max(...times) - Math.min(...times) : null,
    heldSpreadMs: heldTimes.length ? Math.round(Math.max(...heldTimes) - Math.min(...heldTimes)) : null,
    totalMs: Math.round(performance.now() - t0),
    members: members.map((m) => ({
      vm: m.vm.name,
      from: m.source.name,
      to: m.destination.name,
      state: m.state === 'moved' ? 'moved' : m.state === 'stayed' ? 'stayed' : 'failed',
      downtimeMs: m.outcome?.downtimeMs ?? null,
      heldMs: m.heldAt !== null && m.continuedAt !== null ? Math.round(m.continuedAt - m.heldAt) : null,
      pacedBytesPerSecond: m.slowest,
      resumedAt: m.incoming?.resumedAt ?? null,
      error: errorOf(m.error),
    })),
  };
  // A member lost after the commit (its destination died as it switched): consistent mode fails with the split.
  const lost = members.filter((m) => m.state === 'failed' || (request.mode === 'consistent' && m.state !== 'moved'));
  if (lost.length > 0) throw new OffshootError('GROUP_MIGRATION_FAILED', `the group migration of ${names} split after its switch-over: ${lost.map((m) => m.vm.name).join(', ')} did not move (${lost[0]?.error?.message ?? 'unknown'})`, { ...result }, 500);
  return result;

  /** prepare and transfer of one member, until its source holds it at the switch-over. */
  async function toHold(m: Member, t: MigrationTuning): Promise<void> {
    const target = await prepareDestination(m.agents.destination, m.vm, m.plan, m.journal, { postcopy: false, multifdChannels: t.multifdChannels, tls: t.tls, resume: m.previous === 'running' });
    m.prepared = true;
    m.journal.destinationRuntime = target.runtime;
    m.journal.phase = 'transfer';
    await save();
    m.controller.signal.throwIfAborted();
    m.state = 'copying';
    let held!: () => void;
    const isHeld = new Promise<void>((resolve) => (held = resolve));
    m.out = runOperation(m.agents.source, 'migrateOut', { operationId: m.journal.migrateOperationId, vmId: m.vm.id, pathId: m.journal.pathId, migration: target.migration, nbd: target.nbd, disks: m.plan.mirrors, tuning: t, hold: true }, {
      signal: m.controller.signal,
      onProgress: (e) => {
        const d = (e.data ?? {}) as Partial<MigrationProgress>;
        m.progress = { phase: d.phase ?? 'memory', pass: d.pass ?? 0, remainingBytes: d.remainingBytes ?? 0, dirtyBytesPerSecond: d.dirtyBytesPerSecond ?? 0, bandwidthBytesPerSecond: d.bandwidthBytesPerSecond ?? 0, expectedDowntimeMs: d.expectedDowntimeMs ?? null, diskDoneBytes: d.diskDoneBytes ?? 0, diskTotalBytes: d.diskTotalBytes ?? 0 };
        if (d.phase === 'held' && m.state === 'copying') {
          m.state = 'held';
          m.heldAt = performance.now();
          held();
        }
      },
    });
    m.out.catch(() => undefined);
    await Promise.race([isHeld, m.out.then(() => void (m.state = 'continued'))]);
  }
}

/** A member that did not switch: rolled back as a single migration is; it runs on at its source. */
async function undo(ctx: EngineContext, m: Member): Promise<void> {
  if (m.state === 'stayed') return;
  // A member stopped while held: its source rolls its operation back first (the guest runs on there).
  await m.out?.catch(() => undefined);
  if (m.path || m.prepared) await rollBackMigration(m.agents, m.journal, ctx.logger);
  await ctx.states.settle(m.vm.id, ['migrating'], m.previous, null).catch(() => undefined);
  if (m.state !== 'failed') m.error = null;
  m.state = 'stayed';
}

/** After the commit: the member's migration ends, its destination runs the guest, the inventory moves it, its source goes. */
async function finish(ctx: EngineContext, m: Member): Promise<void> {
  try {
    m.outcome = await (m.out as Promise<MigrateOutResult>);
  } catch (err) {
    if (!(await runsAtDestination(m.agents.destination, m.vm.id))) {
      await rollBackMigration(m.agents, m.journal, ctx.logger);
      await ctx.states.settle(m.vm.id, ['migrating'], m.previous, null).catch(() => undefined);
      m.error = err as Error;
      m.state = 'stayed';
      return;
    }
    // The source reported a failure after the guest ran at the destination: the member moved all the same.
    ctx.logger.warn({ vm: m.vm.name, err: (err as Error).message }, 'the source reported a failure after the guest ran at the destination');
    m.error = err as Error;
  }
  try {
    m.incoming = await awaitDestination(m.agents.destination, m.journal);
  } catch (err) {
    await rollBackMigration(m.agents, m.journal, ctx.logger);
    await ctx.states.settle(m.vm.id, ['migrating'], 'failed', `its group migration to ${m.destination.name} completed at the source but the destination did not run it: ${(err as Error).message}`, { runtime: null });
    m.error = err as Error;
    m.state = 'failed';
    return;
  }
  m.journal.phase = 'switched';
  await recordAtDestination(ctx, m.journal, m.incoming);
  m.state = 'moved';
  await finishSource(ctx, m.agents, m.journal);
}
