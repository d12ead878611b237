// Group migration (issue 13): several VMs move together, with one
// coordinated switch-over. Phase by phase:
//   plan      every member is planned as a single migration is (plan-migration.ts);
//             a member that cannot be planned refuses the whole group, nothing moved
//   path      each member's isolated path, opened one after another (each avoids
//             the slots the ones before took)
//   prepare   every destination waits with its target disks exported (in
//             parallel), told to keep the guest paused after the migration
//             completed (holdAfter)
//   transfer  every member's pre-copy runs with `hold`: its source stops at
//             QEMU's pre-switchover point (guest stopped, disk mirrors
//             completed) and waits. Each starts braked (guest running,
//             bandwidth at a crawl, 1 ms downtime limit; a member with disks
//             once its mirrors are ready) and the pacer (group-pacing.ts, at
//             each progress report, every 50 ms for a group member, and every
//             50 ms besides) starts the longest first and the others when the
//             slowest needs no more than they do; a started member runs its
//             first pass at full bandwidth with a 1 ms downtime limit, a light
//             one is slowed at the brink of its end, and past it a member
//             waits braked at a crawl, guest running (its source brakes
//             itself at QEMU's event for that pass, migrateOut's
//             brakeAfterFirstPass, and says so in its reports: the pacer's
//             brake, a report and a call away, came 0.3-1 s late under load
//             while a light member's small passes ran back to back until
//             one found nothing dirty; one whose guest dirtied
//             much during its first pass waits parked at a crawl while
//             another member is still in its first pass, then hovers at full
//             bandwidth until its passes are small, when its source parks
//             itself, setMigrationParameters' parkBelowBytes); once all
//             are past their first pass and the hovering ones' passes are
//             small (ripe), the braked ones are released (the group's
//             settings), the longest last run first, and the hovering ones
//             land right after, so all reach their switch-over at about the
//             same time. The result gives each member's pacing timeline and
//             its last passes (where its time went). Members use one memory
//             channel unless the request asks for more (group-request.ts:
//             with multifd a crawl does not hold a member past its first pass)
//   send back a member held before its last run while another has not yet
//             reached the end of its first pass or hovers busy, not ripe
//             (group-pacing.ts's arrivedAlone: its last passes outran its
//             source's brake) would wait stopped for seconds: its source is
//             told it may not hold (migrateOut's holdAllowed, until the pacer
//             allows it with setMigrationParameters) and rolls itself back at
//             pre-switchover (MIGRATION_SENT_BACK, its guest runs on there);
//             one held alone all the same (the allowance came just before) is
//             rolled back by the controller. Its destination and path go, and
//             it goes again under new operation ids on a new path, paced
//             anew (at most MAX_SEND_BACKS times; then it waits held)
//   commit    when every member is held, all are continued at once; each
//             arrives (completed, its destination paused), then all
//             destinations are started together (group-switch.ts)
// Before the start a failure of a member, or a cancel before the continue, in
// `consistent` mode sends every member back: all run on at their sources in
// the same QEMUs (roll-back.ts before the continue, revertOutgoing after it),
// the destinations and paths go. In `available` mode only the failed member
// goes back; the others move, and the result says which. Post-copy is never
// used (a member in post-copy has switched alone). The journal holds every
// member's migration journal and the group's phase, so a controller that died
// midway rolls the group back before its start, or finishes it after
// (recover-group.ts).
import { OffshootError } from '../../common/index.ts';
import type { MigrationTuning } from '../../protocol/index.ts';
import { newOperationId, runOperation } from '../../protocol/index.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskContext } from '../tasks.ts';
import { openDataPath } from './data-path.ts';
import type { GroupJournal, GroupMember, GroupMigrateResult, Member } from './group-member.ts';
import type { PaceDecision, PacedMember, PaceSettings } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, arrivedAlone, paceGroup } from './group-pacing.ts';
import type { GroupMigrateRequest } from './group-request.ts';
import { groupTuningOf } from './group-request.ts';
import { checkArrived, continueAll, revert, startAll } from './group-switch.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import { planMigration } from './plan-migration.ts';
import { rollBackMigration } from './roll-back.ts';
import type { MigrationProgress } from './transfer.ts';
import { prepareDestination } from './transfer.ts';

export type { GroupJournal, GroupMember, GroupMemberResult, GroupMemberState, GroupMigrateResult } from './group-member.ts';

/** How often the pacer looks at the members' progress besides each report (the agents report about every 200 ms). */
const PACE_MS = 50;

/** How many times a member that reached its switch-over alone is sent back to go again; after that it waits held. */
const MAX_SEND_BACKS = 2;

function errorOf(err: Error | null): { code: string; message: string } | null {
  if (!err) return null;
  return { code: err instanceof OffshootError ? err.code : 'INTERNAL', message: err.message };
}

export async function runGroupMigration(ctx: EngineContext, group: GroupMember[], request: GroupMigrateRequest, task: TaskContext, signal: AbortSignal): Promise<GroupMigrateResult> {
  const t0 = performance.now();
  const tuning = groupTuningOf(request);
  const full = { maxBandwidthBytesPerSecond: tuning.maxBandwidthBytesPerSecond, downtimeLimitMs: tuning.downtimeLimitMs };
  const names = group.map((g) => g.vm.name).join(', ');
  await task.progress(0.01, `planning the moves of ${names}`);
  const members: Member[] = [];
  try {
    for (const g of group) {
      const agents = { source: ctx.fleet.agent(g.source.id), destination: ctx.fleet.agent(g.destination.id) };
      const plan = await planMigration(g.vm, g.source, g.destination, agents, { ...request, postcopy: 'never' });
      const journal: MigrateJournal = { vmId: g.vm.id, phase: 'path', previous: g.previous, sourceHostId: g.source.id, destinationHostId: g.destination.id, pathId: newOperationId(), prepareOperationId: newOperationId(), awaitOperationId: newOperationId(), migrateOperationId: newOperationId(), destinationSpec: plan.destinationSpec, destinationRuntime: null };
      members.push({ ...g, agents, plan, journal, controller: new AbortController(), state: 'planned', path: null, prepared: false, progress: null, pace: newPace(full, group.length < 2), heldAt: null, continuedAt: null, at: { held: null, continued: null, arrived: null, startSent: null, stopped: null }, out: null, outcome: null, incoming: null, error: null, sentBackMs: [] });
    }
  } catch (err) {
    // Nothing moved yet: every member is as it was.
    for (const g of group) await ctx.states.settle(g.vm.id, ['migrating'], g.previous, null).catch(() => undefined);
    throw err;
  }
  let phase: GroupJournal['phase'] = 'transfer';
  const save = () => task.journal({ mode: request.mode, phase, members: members.map((m) => m.journal) } satisfies GroupJournal);
  await save();

  let committed = false;
  // Why the group stops (a member sent back meanwhile gets a new controller: stopped at once).
  let stopping: { reason: unknown } | null = null;
  const stopAll = (reason: unknown) => {
    if (committed) return;
    stopping ??= { reason };
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
  const openPath = async (m: Member) => {
    m.path = await openDataPath(m.agents, m.journal.pathId, { source: m.plan.sourceAddress, destination: m.plan.destinationAddress }, [...m.plan.slotsInUse, ...taken]);
    taken.push(m.path.slot);
    m.journal.phase = 'prepare';
  };
  for (const m of members) {
    if (m.controller.signal.aborted) break;
    await openPath(m).catch((err: unknown) => fail(m, err));
  }
  await save();

  // prepare + transfer, every member at once, until each is held at its switch-over (or failed); the pacer brakes and releases.
  let lastProgress = 0;
  const paceOptions = { ...full, windowMs: request.windowMs };
  const pacer = setInterval(() => {
    pace(members, paceOptions);
    const now = Date.now();
    if (now - lastProgress < 1_000) return;
    lastProgress = now;
    const held = members.filter((m) => m.state === 'held').length;
    const detail = { members: members.map((m) => ({ vm: m.vm.name, state: m.state, phase: m.progress?.phase ?? null, pass: m.progress?.pass ?? null, remainingBytes: m.progress?.remainingBytes ?? null, braked: m.pace.braked, bandwidthBytesPerSecond: m.pace.applied.maxBandwidthBytesPerSecond })) };
    void task.progress(0.1 + (0.8 * held) / members.length, `${held} of ${members.length} member(s) held at the switch-over`, detail).catch(() => undefined);
  }, PACE_MS);
  try {
    await Promise.all(members.map((m) => (m.path && !m.controller.signal.aborted ? toHold(m, tuning).catch((err: unknown) => fail(m, err)) : undefined)));
  } finally {
    clearInterval(pacer);
    for (const m of members) endPacing(m, performance.now());
  }

  const failed = members.filter((m) => m.state !== 'held');
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
  const going = members.filter((m) => m.state === 'held');
  await task.progress(0.9, `switching ${going.map((m) => m.vm.name).join(', ')} over together`);
  await ctx.faults?.('migrate-group.commit');
  await continueAll(ctx, going);
  await ctx.faults?.('migrate-group.arrived');
  await checkArrived(going.filter((m) => m.state === 'arrived'));
  const lost = going.filter((m) => m.state !== 'arrived');
  if (lost.length > 0 && (request.mode === 'consistent' || lost.length === going.length)) {
    // Nobody was started: every member goes back to its source, in the same QEMU.
    await Promise.all(going.map((m) => revert(ctx, m)));
    await save();
    const first = lost[0] as Member;
    throw new OffshootError('GROUP_MIGRATION_FAILED', `the group migration of ${names} stopped before its start: ${first.vm.name} failed after its switch-over began (${first.error?.message ?? 'unknown'}); every member runs on at its source`, { mode: request.mode, failed: lost.map((m) => ({ vm: m.vm.name, error: errorOf(m.error) })) }, 500, { cause: first.error });
  }
  await Promise.all(lost.map((m) => revert(ctx, m)));
  // start: from here recovery finishes the group forward.
  phase = 'start';
  await save();
  await ctx.faults?.('migrate-group.start');
  await startAll(ctx, going.filter((m) => m.state === 'arrived'));
  await save();
  const result = resultOf(request, members, t0);
  // A member lost at its start (its destination died): it runs on at its source, the group is split.
  const split = members.filter((m) => m.state === 'failed' || (request.mode === 'consistent' && m.state !== 'moved'));
  if (split.length > 0) throw new OffshootError('GROUP_MIGRATION_FAILED', `the group migration of ${names} split at its start: ${split.map((m) => m.vm.name).join(', ')} did not move (${split[0]?.error?.message ?? 'unknown'})`, { ...result }, 500);
  return result;

  /**
   * prepare and transfer of one member, until its source holds it at the switch-over. Sent back (arrivedAlone), it
   * goes again: by its source, which reached its switch-over while not allowed to hold (MIGRATION_SENT_BACK, rolled
   * back there at once), or by the controller, held alone all the same (the allowance was on its way, or true).
   */
  async function toHold(m: Member, t: MigrationTuning): Promise<void> {
    for (;;) {
      const byItsSource = await copyToHold(m, t).then(
        () => null,
        (err: unknown) => {
          if (err instanceof OffshootError && err.code === 'MIGRATION_SENT_BACK') return err;
          throw err;
        },
      );
      if (byItsSource) {
        const { stoppedAt, resumedAt } = byItsSource.details as { stoppedAt?: string | null; resumedAt?: string };
        const pauseMs = stoppedAt && resumedAt ? Date.parse(resumedAt) - Date.parse(stoppedAt) : null;
        restart(m, 'its source sent it back (its group could not hold it yet)');
        await goAgain(m, pauseMs);
        continue;
      }
      if (m.state !== 'held' || m.sentBackMs.length >= MAX_SEND_BACKS || !alone(m)) return;
      // Held alone: its source's operation is cancelled (it rolls itself back: the mirrors go, the guest runs on there).
      const seenHeld = m.heldAt ?? performance.now();
      const stoppedAt = m.at.stopped;
      const out = m.out;
      const stopped = restart(m, 'it reached its switch-over alone');
      stopped.abort(new OffshootError('TASK_CANCELLED', `${m.vm.name} reached its switch-over alone: it is sent back to go again`, { vm: m.vm.name }, 409));
      await out?.catch(() => undefined);
      await goAgain(m, Math.round(stoppedAt !== null && Number.isFinite(stoppedAt) ? Date.now() - stoppedAt : performance.now() - seenHeld));
    }
  }

  /** Whether `m`, held now, would wait for the others' first passes or a busy one's ripening (group-pacing.ts's arrivedAlone). */
  function alone(m: Member): boolean {
    const now = performance.now();
    return arrivedAlone(m.pace, members.filter((o) => o !== m && isPaced(o)).map((o) => pacedOf(o, now)), full.downtimeLimitMs);
  }

  /** A member sent back starts over: from here the pacer sees it preparing (the others wait for it), and a stop of the group reaches its new controller; answers the one of the attempt that ends. */
  function restart(m: Member, why: string): AbortController {
    const others = members.filter((o) => o !== m && isPaced(o));
    ctx.logger.info({ vmId: m.vm.id, vm: m.vm.name, why, others: others.map((o) => ({ vm: o.vm.name, state: o.state, phase: o.progress?.phase ?? null, pass: o.progress?.pass ?? null })) }, 'a group member is sent back to run at its source and goes again');
    const ending = m.controller;
    m.controller = new AbortController();
    if (stopping) m.controller.abort(stopping.reason);
    Object.assign(m, { state: 'planned', path: null, prepared: false, progress: null, pace: newPace(full, false), heldAt: null, out: null });
    Object.assign(m.at, { held: null, stopped: null });
    return ending;
  }

  /**
   * After its source rolled its attempt back: its destination and path go (rollBackMigration, under the journal's ids,
   * idempotent at the source), and it goes again on a new path under new operation ids journaled before any of them
   * exists. Not stopped at its source, it fails (the group's undo goes over it again under the same ids).
   */
  async function goAgain(m: Member, pauseMs: number | null): Promise<void> {
    const did = await rollBackMigration(m.agents, m.journal, ctx.logger);
    if (did.some((step) => step.includes('not stopped'))) {
      m.prepared = true;
      throw new OffshootError('MIGRATION_FAILED', `${m.vm.name} was sent back to its source and could not be stopped there: ${did.join(', ')}`, { vm: m.vm.name, did }, 500);
    }
    m.sentBackMs.push(pauseMs);
    Object.assign(m.journal, { phase: 'path', pathId: newOperationId(), prepareOperationId: newOperationId(), awaitOperationId: newOperationId(), migrateOperationId: newOperationId(), destinationRuntime: null } satisfies Partial<MigrateJournal>);
    await save();
    await ctx.faults?.('migrate-group.sent-back');
    m.controller.signal.throwIfAborted();
    await openPath(m);
    await save();
  }

  /** One attempt of a member: prepare and transfer, until its source holds it at the switch-over. */
  async function copyToHold(m: Member, t: MigrationTuning): Promise<void> {
    const target = await prepareDestination(m.agents.destination, m.vm, m.plan, m.journal, { postcopy: false, multifdChannels: t.multifdChannels, tls: t.tls, resume: m.previous === 'running', holdAfter: true });
    m.prepared = true;
    m.journal.destinationRuntime = target.runtime;
    m.journal.phase = 'transfer';
    await save();
    m.controller.signal.throwIfAborted();
    m.state = 'copying';
    // In a group every member starts its pre-copy braked: the pacer starts it (group-pacing.ts). Disk mirrors first run at full speed (braked once they are ready).
    const braked = !m.pace.started && m.plan.mirrors.length === 0;
    // Held at its switch-over only when the others are near theirs (arrivedAlone), or after its last send-back (else its source sends itself back).
    m.pace.holdAllowed = members.length < 2 || m.sentBackMs.length >= MAX_SEND_BACKS || !alone(m);
    const first = braked ? crawlOf(t) : t;
    if (braked) {
      m.pace.applied = { maxBandwidthBytesPerSecond: first.maxBandwidthBytesPerSecond, downtimeLimitMs: first.downtimeLimitMs };
      m.pace.braked = true;
    }
    let held!: () => void;
    const isHeld = new Promise<void>((resolve) => (held = resolve));
    const attemptPace = m.pace;
    m.out = runOperation(m.agents.source, 'migrateOut', { operationId: m.journal.migrateOperationId, vmId: m.vm.id, pathId: m.journal.pathId, migration: target.migration, nbd: target.nbd, disks: m.plan.mirrors, tuning: first, hold: true, brakeAfterFirstPass: members.length >= 2 ? crawlSettings(t) : null, holdAllowed: m.pace.holdAllowed }, {
      signal: m.controller.signal,
      onProgress: (e) => {
        // The last reports of an attempt sent back (its rollback) are not the member's.
        if (m.pace !== attemptPace) return;
        const d = (e.data ?? {}) as Partial<MigrationProgress>;
        const prevPass = m.progress?.pass;
        m.progress = { phase: d.phase ?? 'memory', pass: d.pass ?? 0, remainingBytes: d.remainingBytes ?? 0, dirtyBytesPerSecond: d.dirtyBytesPerSecond ?? 0, bandwidthBytesPerSecond: d.bandwidthBytesPerSecond ?? 0, expectedDowntimeMs: d.expectedDowntimeMs ?? null, diskDoneBytes: d.diskDoneBytes ?? 0, diskTotalBytes: d.diskTotalBytes ?? 0 };
        m.pace.reportedAt = performance.now();
        // The size its current pass began with (past its first pass: what its guest dirtied during the pass before), the
        // one before, and its second pass's (what it dirtied during its first pass: a busy guest hovers past it).
        if (m.progress.pass >= 2 && prevPass !== m.progress.pass && prevPass !== undefined && prevPass >= 2) m.pace.previousPassBytes = m.pace.passBytes;
        if (m.progress.pass >= 2) m.pace.passBytes = prevPass === m.progress.pass ? Math.max(m.pace.passBytes, m.progress.remainingBytes) : m.progress.remainingBytes;
        if (m.progress.phase === 'memory' && m.progress.pass >= 2) {
          m.pace.secondPass ??= { pass: m.progress.pass, bytes: 0 };
          if (m.pace.secondPass.pass === m.progress.pass) m.pace.secondPass.bytes = m.pace.passBytes;
        }
        noteProgress(m, typeof e.data === 'object' && e.data !== null && 'throttlePercent' in e.data && typeof e.data.throttlePercent === 'number' ? e.data.throttlePercent : 0);
        if (typeof e.data === 'object' && e.data !== null && 'selfBraked' in e.data && e.data.selfBraked === true) brakedBySource(m, t, 'selfBrake');
        if (typeof e.data === 'object' && e.data !== null && 'selfParked' in e.data && typeof e.data.selfParked === 'number') brakedBySource(m, t, 'selfPark');
        observe(m, m.pace.reportedAt);
        if (d.phase === 'held' && m.state === 'copying') {
          m.state = 'held';
          m.heldAt = performance.now();
          m.pace.marks.held = m.heldAt;
          m.at.held = Date.now();
          const stoppedAt = (d as { stoppedAt?: unknown }).stoppedAt;
          m.at.stopped = typeof stoppedAt === 'string' ? Date.parse(stoppedAt) : null;
          // A member that reached its switch-over while braked or hovering: braked (hovering) until then, held from then.
          endPacing(m, m.heldAt);
          held();
        }
        // Mirrors ready: the member waits for its start at a crawl (its memory phase begins after the dirty-rate sample).
        const mirrored = d.phase === 'disks' && (d.diskTotalBytes ?? 0) > 0 && (d.diskDoneBytes ?? 0) >= (d.diskTotalBytes ?? 0);
        if (!m.pace.started && !m.pace.braked && (mirrored || d.phase === 'memory')) {
          m.pace.braked = true;
          apply(m, { maxBandwidthBytesPerSecond: crawlOf(t).maxBandwidthBytesPerSecond, downtimeLimitMs: crawlOf(t).downtimeLimitMs });
        }
        if (!m.pace.started && m.pace.waitingSince === null && d.phase === 'memory') m.pace.waitingSince = performance.now();
        pace(members, paceOptions);
      },
    });
    m.out.catch(() => undefined);
    await Promise.race([isHeld, m.out.then(() => void (m.state = 'continued'))]);
  }
}

/** A member the pacer looks at: not yet continued, nor failed or rolled back. */
function isPaced(m: Member): boolean {
  return m.state === 'planned' || m.state === 'copying' || m.state === 'held';
}

/** What the pacer knows of a member (group-pacing.ts), at `now` (performance.now()). */
function pacedOf(m: Member, now: number): PacedMember {
  const p = m.progress;
  return { vmId: m.vm.id, phase: m.state === 'held' ? 'held' : (p?.phase ?? 'preparing'), pass: p?.pass ?? 0, remainingBytes: p?.remainingBytes ?? 0, dirtyBytesPerSecond: p?.dirtyBytesPerSecond ?? 0, bandwidthBytesPerSecond: bandwidthOf(m), peakBandwidthBytesPerSecond: m.pace.bandwidthPeak, lastRunS: m.pace.marks.lastRun === undefined ? 0 : (now - m.pace.marks.lastRun) / 1000, drainBytesPerSecond: m.pace.drainPeak, passBytes: m.pace.passBytes, previousPassBytes: m.pace.previousPassBytes, secondPassBytes: m.pace.secondPass?.bytes ?? 0, started: m.pace.started, braked: m.pace.braked, released: m.pace.released, landed: m.pace.landed, sinceReportS: p ? Math.max(0, now - m.pace.reportedAt) / 1000 : 0, parked: m.pace.parked, hoverPass: m.pace.hoverPass, selfParked: m.pace.selfParked };
}

/** A member's pacing state before its first report: braked at the start of its pre-copy unless `started` (a group of one). */
function newPace(full: PaceSettings, started: boolean): Member['pace'] {
  return { applied: full, braked: false, released: false, started, waitingSince: null, startDelayMs: 0, sending: Promise.resolve(), brakedSince: null, brakedMs: 0, lowest: null, hovering: false, landed: false, hoverSince: null, hoveredMs: 0, landedAt: null, releasedAt: null, reportedAt: 0, bandwidthPeak: 0, drainPeak: 0, sample: null, passBytes: 0, previousPassBytes: 0, secondPass: null, parked: false, hoverPass: 0, selfBraked: false, selfParked: false, parkArmed: false, holdAllowed: false, marks: {}, passes: [] };
}

/** A member's rates at full speed, from its progress: the best bandwidth QEMU reported and the best rate its remaining memory fell. */
function observe(m: Member, now: number): void {
  const p = m.progress;
  if (!p || p.phase !== 'memory' || m.pace.braked) {
    m.pace.sample = null;
    return;
  }
  m.pace.bandwidthPeak = Math.max(m.pace.bandwidthPeak, p.bandwidthBytesPerSecond);
  // Over 100 ms at least (a group member reports every 50 ms: shorter spans are noisy).
  const last = m.pace.sample;
  if (last && last.pass === p.pass && now - last.at < 100) return;
  if (last && last.pass === p.pass && p.remainingBytes < last.remaining) m.pace.drainPeak = Math.max(m.pace.drainPeak, ((last.remaining - p.remainingBytes) * 1000) / (now - last.at));
  m.pace.sample = { at: now, remaining: p.remainingBytes, pass: p.pass };
}

/** A report's marks for the result: its pre-copy's first report, the end of its first pass, and each new pass past it (what it began with, the most reported in it). */
function noteProgress(m: Member, throttlePercent: number): void {
  const p = m.progress;
  if (!p || p.phase !== 'memory') return;
  const now = m.pace.reportedAt;
  m.pace.marks.precopy ??= now;
  if (p.pass < 2) return;
  m.pace.marks.firstPassEnd ??= now;
  const last = m.pace.passes.at(-1);
  if (last?.pass === p.pass) {
    last.bytes = Math.max(last.bytes, p.remainingBytes);
    last.bandwidth = p.bandwidthBytesPerSecond;
    last.throttle = throttlePercent;
    // At most the last 200 passes (a member hovering for minutes iterates thousands).
  } else if (m.pace.passes.push({ pass: p.pass, at: now, bytes: p.remainingBytes, bandwidth: p.bandwidthBytesPerSecond, throttle: throttlePercent }) > 200) m.pace.passes.shift();
}

/** A member's pacing ends (it is held, or the transfer phase ended): its time braked or hovering is counted. */
function endPacing(m: Member, now: number): void {
  if (m.pace.brakedSince !== null) m.pace.brakedMs += now - m.pace.brakedSince;
  m.pace.brakedSince = null;
  if (m.pace.hoverSince !== null) m.pace.hoveredMs += now - m.pace.hoverSince;
  m.pace.hoverSince = null;
}

/** The settings of a member waiting for its start or braked at the brink. */
function crawlOf(t: MigrationTuning): MigrationTuning {
  return { ...t, ...crawlSettings(t) };
}

function crawlSettings(t: MigrationTuning): PaceSettings {
  return { maxBandwidthBytesPerSecond: Math.min(t.maxBandwidthBytesPerSecond, BRAKE_FLOOR), downtimeLimitMs: Math.min(t.downtimeLimitMs, BRAKE_DOWNTIME_MS) };
}

/**
 * Its source reported that it braked itself at the end of its first pass (migrateOut's brakeAfterFirstPass), or
 * parked itself at a small pass while it hovered (setMigrationParameters' parkBelowBytes): from here it is braked at
 * a crawl, as if the pacer had braked it (a busy one then hovers at the pacer's next decision; a parked one is ripe
 * and waits for its last run).
 */
function brakedBySource(m: Member, t: MigrationTuning, how: 'selfBrake' | 'selfPark'): void {
  if (how === 'selfBrake' ? m.pace.selfBraked : m.pace.selfParked) return;
  const now = performance.now();
  if (how === 'selfBrake') m.pace.selfBraked = true;
  else m.pace.selfParked = true;
  m.pace.marks[how] = now;
  m.pace.parkArmed = false;
  m.pace.applied = crawlSettings(t);
  m.pace.lowest = Math.min(m.pace.lowest ?? m.pace.applied.maxBandwidthBytesPerSecond, m.pace.applied.maxBandwidthBytesPerSecond);
  if (!m.pace.braked) {
    m.pace.braked = true;
    m.pace.brakedSince = now;
    m.pace.sample = null;
  }
  if (m.pace.hovering) {
    m.pace.hoveredMs += now - (m.pace.hoverSince ?? now);
    m.pace.hoverSince = null;
    m.pace.hovering = false;
  }
}

/** Sends a member's new settings to its source, after those sent before (a brake and its release must not cross); `park` arms its source's park (else disarmed). */
function apply(m: Member, settings: PaceSettings, park: PaceDecision['park'] = null): void {
  m.pace.applied = settings;
  m.pace.parkArmed = park !== null;
  // The pass it was decided on: decided on its first pass, the source ignores it once it braked itself after it.
  const pass = m.progress?.pass ?? 0;
  // Its last run's settings (no crawl, the group's limit or more): when its source confirmed them, for the timeline.
  const lastRun = settings.downtimeLimitMs > BRAKE_DOWNTIME_MS && settings.maxBandwidthBytesPerSecond > BRAKE_FLOOR;
  const pace = m.pace;
  const holdAllowed = pace.holdAllowed;
  pace.sending = pace.sending.then(() => {
    // Sent back meanwhile: its next attempt is paced anew (this change was for the one that ended).
    if (m.pace !== pace) return undefined;
    return m.agents.source.setMigrationParameters({ vmId: m.vm.id, ...settings, pass, holdAllowed, ...(park ? { parkBelowBytes: park.belowBytes, parkFromPass: park.fromPass } : {}) }).then(
      (inForce) => {
        // Ignored as stale (decided before its source braked or parked itself): the limits in force are what it runs
        // with, so the pacer's next decision is sent again unless it asks for those (else it would count it sent).
        const ignored = inForce.maxBandwidthBytesPerSecond !== settings.maxBandwidthBytesPerSecond || inForce.downtimeLimitMs !== settings.downtimeLimitMs;
        if (ignored && m.pace.applied === settings) m.pace.applied = inForce;
        else if (lastRun && m.pace.marks.lastRunApplied === undefined && m.pace.marks.lastRun !== undefined) m.pace.marks.lastRunApplied = performance.now();
      },
      () => undefined,
    );
  });
}

/** A member's bandwidth for its estimate: its last figure while it runs (the best seen is optimistic under load), else the best seen at full speed. */
function bandwidthOf(m: Member): number {
  const now = m.progress?.bandwidthBytesPerSecond ?? 0;
  return m.pace.started && !m.pace.braked && now > 0 && m.pace.bandwidthPeak > 0 ? Math.min(now, m.pace.bandwidthPeak) : m.pace.bandwidthPeak;
}

/** The pacer, at each report and tick: each member in pre-copy is started, braked or released as group-pacing.ts decides. */
function pace(members: Member[], options: Parameters<typeof paceGroup>[1]): void {
  const live = members.filter(isPaced);
  const now = performance.now();
  const rows = live.map((m) => pacedOf(m, now));
  const decisions = paceGroup(rows, options);
  for (const m of live) {
    const d = decisions.get(m.vm.id);
    if (!d || m.state !== 'copying') continue;
    const was = m.pace.applied;
    if (d.started && !m.pace.started) {
      // Its start: from here it runs at full speed (its wait at the start is no brake).
      m.pace.started = true;
      m.pace.startDelayMs = m.pace.waitingSince === null ? 0 : now - m.pace.waitingSince;
      m.pace.marks.start = now;
      m.pace.sample = null;
    } else if (m.pace.started) {
      if (d.braked && !m.pace.braked) m.pace.brakedSince = now;
      if (d.parked) m.pace.marks.park ??= now;
      else if (d.braked) m.pace.marks[(m.progress?.pass ?? 0) >= 2 ? 'brake' : 'brink'] ??= now;
      // Hovering again after it was parked: ripe only two passes later (the first sends what its guest dirtied while parked).
      if (m.pace.parked && !d.parked) {
        m.pace.hoverPass = m.progress?.pass ?? 0;
        m.pace.marks.unpark = now;
      }
      if (!d.braked && m.pace.braked) {
        // Released (its last run), or past the brink found busy: it hovers (no release: it lands later).
        if (!d.hovering) {
          m.pace.released = true;
          m.pace.releasedAt = now;
          m.pace.marks.lastRun ??= now;
        }
        m.pace.brakedMs += now - (m.pace.brakedSince ?? now);
        m.pace.brakedSince = null;
        m.pace.sample = null;
      }
      if (d.braked) m.pace.lowest = Math.min(m.pace.lowest ?? d.settings.maxBandwidthBytesPerSecond, d.settings.maxBandwidthBytesPerSecond);
    }
    m.pace.braked = d.braked;
    m.pace.parked = d.parked;
    if (d.hovering && !m.pace.hovering) m.pace.hoverSince = now;
    if (!d.hovering && m.pace.hovering) {
      m.pace.hoveredMs += now - (m.pace.hoverSince ?? now);
      m.pace.hoverSince = null;
      // Landed (not braked at the brink): the group's downtime limit again, it completes at an iteration boundary.
      if (!d.braked) {
        m.pace.landed = true;
        m.pace.landedAt = now;
        m.pace.marks.lastRun ??= now;
      }
    }
    m.pace.hovering = d.hovering;
    // Its hold is allowed once it is on its last run or the others are near theirs (arrivedAlone), with its settings.
    const allowing = !m.pace.holdAllowed && (m.pace.released || m.pace.landed || !arrivedAlone(m.pace, rows.filter((r) => r.vmId !== m.vm.id), options.downtimeLimitMs));
    if (allowing) m.pace.holdAllowed = true;
    const bandwidthChanged = Math.abs(d.settings.maxBandwidthBytesPerSecond - was.maxBandwidthBytesPerSecond) > was.maxBandwidthBytesPerSecond * 0.1;
    if (!bandwidthChanged && d.settings.downtimeLimitMs === was.downtimeLimitMs && (d.park !== null) === m.pace.parkArmed && !allowing) continue;
    apply(m, d.settings, d.park);
  }
}

function resultOf(request: GroupMigrateRequest, members: Member[], t0: number): GroupMigrateResult {
  const moved = members.filter((m) => m.state === 'moved');
  const resumed = moved.map((m) => (m.incoming?.resumedAt ? Date.parse(m.incoming.resumedAt) : null)).filter((t): t is number => t !== null);
  const heldTimes = members.map((m) => m.heldAt).filter((t): t is number => t !== null);
  return {
    mode: request.mode,
    moved: moved.map((m) => m.vm.name),
    stayed: members.filter((m) => m.state === 'stayed').map((m) => m.vm.name),
    spreadMs: resumed.length ? Math.max(...resumed) - Math.min(...resumed) : null,
    heldSpreadMs: heldTimes.length ? Math.round(Math.max(...heldTimes) - Math.min(...heldTimes)) : null,
    totalMs: Math.round(performance.now() - t0),
    members: members.map((m) => {
      const stoppedAt = m.outcome?.stoppedAt ? Date.parse(m.outcome.stoppedAt) : null;
      const stopAt = stoppedAt;
      const resumedAt = m.state === 'moved' && m.incoming?.resumedAt ? Date.parse(m.incoming.resumedAt) : null;
      return {
        vm: m.vm.name,
        from: m.source.name,
        to: m.destination.name,
        state: m.state === 'moved' ? 'moved' : m.state === 'stayed' ? 'stayed' : 'failed',
        downtimeMs: m.outcome?.downtimeMs ?? null,
        stoppedMs: stoppedAt !== null && resumedAt !== null ? resumedAt - stoppedAt : null,
        heldMs: m.heldAt !== null && m.continuedAt !== null ? Math.round(m.continuedAt - m.heldAt) : null,
        brakedMs: Math.round(m.pace.brakedMs),
        pacedBytesPerSecond: m.pace.lowest,
        startDelayMs: Math.round(m.pace.startDelayMs),
        hoveredMs: Math.round(m.pace.hoveredMs),
        sentBackMs: m.sentBackMs,
        lastRunMs: m.heldAt === null ? null : m.pace.landedAt !== null ? Math.round(m.heldAt - m.pace.landedAt) : m.pace.releasedAt !== null ? Math.round(m.heldAt - m.pace.releasedAt) : null,
        timeline: Object.fromEntries(Object.entries(m.pace.marks).map(([k, v]) => [k, Math.round(v - t0)])),
        passes: m.pace.passes.map((p) => ({ pass: p.pass, atMs: Math.round(p.at - t0), bytes: p.bytes, bandwidthBytesPerSecond: p.bandwidth, throttlePercent: p.throttle })),
        breakdown: resumedAt !== null && m.at.held !== null && m.at.continued !== null && m.at.arrived !== null && m.at.startSent !== null ? { reachMs: stopAt === null ? null : m.at.held - stopAt, heldMs: m.at.continued - m.at.held, switchMs: m.at.arrived - m.at.continued, waitMs: m.at.startSent - m.at.arrived, startMs: resumedAt - m.at.startSent } : null,
        resumedAt: m.state === 'moved' ? (m.incoming?.resumedAt ?? null) : null,
        error: errorOf(m.error),
      };
    }),
  };
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
