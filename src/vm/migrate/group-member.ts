// A group migration's member as the runner (run-group.ts) and its switch-over
// (group-switch.ts) track it, the group's journal, and the result it gives.
// A member's lifecycle:
//   planned -> copying -> held -> continued -> arrived -> moved
// (held -> planned: it reached its switch-over alone and was sent back to
// run at its source and go again, run-group.ts)
// (arrived: its migration completed and its destination keeps the guest
// paused until the group starts all), or `stayed` (rolled back: it runs on at
// its source) or `failed` (it runs nowhere: a failure after it was started).
import type { AgentClient, IncomingResult, MigrateOutResult } from '../../protocol/index.ts';
import { IllegalStateError } from '../../common/index.ts';
import type { HostRecord } from '../hosts/index.ts';
import type { VmRecord } from '../records.ts';
import type { VmState } from '../state.ts';
import type { OpenedPath } from './data-path.ts';
import type { PaceSettings } from './group-pacing.ts';
import type { GroupMode } from './group-request.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import type { MigrationPlan } from './plan-migration.ts';
import type { MigrationProgress } from './transfer.ts';

export interface GroupMember {
  vm: VmRecord;
  previous: VmState;
  source: HostRecord;
  destination: HostRecord;
}

/** transfer: members copy or are held, nothing started (recovery rolls all back); start: every member arrived and the destinations are being started (recovery starts the held ones). */
export const GROUP_PHASES = ['transfer', 'start'] as const;
export type GroupPhase = (typeof GROUP_PHASES)[number];

export interface GroupJournal {
  mode: GroupMode;
  /** Absent in journals of older controllers (they started each destination as its migration completed). */
  phase?: GroupPhase;
  members: MigrateJournal[];
}

export const GROUP_MEMBER_STATES = ['planned', 'copying', 'held', 'continued', 'arrived', 'moved', 'stayed', 'failed'] as const;
export type GroupMemberState = (typeof GROUP_MEMBER_STATES)[number];

/** The lifecycle's guard: `operation` needs the member in one of `required`. */
export function requireMemberState(m: { vm: { name: string }; state: GroupMemberState }, required: GroupMemberState[], operation: string): void {
  if (!required.includes(m.state)) throw new IllegalStateError(`group member ${m.vm.name}`, m.state, required, operation);
}

export interface GroupMemberResult {
  vm: string;
  from: string;
  to: string;
  /** moved: it runs at its destination; stayed: it runs on at its source; failed: it failed after it was started and runs nowhere. */
  state: 'moved' | 'stayed' | 'failed';
  /** QEMU's figure: the guest stopped at the source until the migration completed there (the hold included). */
  downtimeMs: number | null;
  /** The guest's whole stop: stopped at the source until it ran at the destination (wall clocks of the two QEMUs), the wait for the group's start included. */
  stoppedMs: number | null;
  /** How long it was held at its pre-switchover point waiting for the others (controller's clock). */
  heldMs: number | null;
  /** How long the pacer kept it braked in pre-copy (its guest running), and the lowest bandwidth cap it had then (null: never braked). */
  brakedMs: number;
  pacedBytesPerSecond: number | null;
  /** How long it waited braked at the start of its pre-copy (guest running) before the pacer started it: a light member starts late so that it finishes with the heavy one. */
  startDelayMs: number;
  /** How long it ran started at full bandwidth with a 1 ms downtime limit (guest running): its first pass, and past it for a busy one, until it was slowed, braked, or sent on its last run. */
  hoveredMs: number;
  /**
   * Each time it was sent back to run at its source and go again (it reached its switch-over while the group was far
   * from it): its guest's pause, from its source's STOP until it ran on there (ms; by its source's clock when its source
   * sent it back itself, else its source's STOP to the controller's clock, or from when the controller saw it held;
   * null: not known).
   */
  sentBackMs: Array<number | null>;
  /** From its release (or its landing straight from its first pass) until it was held at its switch-over; null when it was neither. */
  lastRunMs: number | null;
  /** Where its whole stop went (wall clocks; null when it did not reach them all). */
  breakdown: StopBreakdown | null;
  /** When each step of its pacing came, ms since the group's start (controller's clock; absent: it did not happen). */
  timeline: PaceTimeline;
  /** Its passes past the first: when each began (ms since the group's start), the most it had left in it (what its guest dirtied in the pass before, or while braked), and the bandwidth and auto-converge throttle its source last reported in it. */
  passes: Array<{ pass: number; atMs: number; bytes: number; bandwidthBytesPerSecond: number; throttlePercent: number }>;
  resumedAt: string | null;
  error: { code: string; message: string } | null;
}

/** A member's stop, phase by phase: their sum is its whole stop (stoppedMs) when reachMs is known. */
export interface StopBreakdown {
  /** Its source QEMU stopped at pre-switchover until the controller saw it held (disk mirrors completed, the report); null when its source did not report its STOP time. */
  reachMs: number | null;
  /** Held at the barrier: until the controller continued it (the wait for the others). */
  heldMs: number;
  /** Continued until its destination held the guest (the last pages and devices, the destination's load, the reports). */
  switchMs: number;
  /** Arrived until the group's start was sent (the wait for the other members' arrival, the check, the journal). */
  waitMs: number;
  /** The start sent until the guest ran at its destination (`cont`). */
  startMs: number;
}

/** A member's pacing steps (ms since the group's start). */
export interface PaceTimeline {
  /** Its pre-copy began (first memory report: its dirty rate sampled, braked at the start). */
  precopy?: number;
  /** The pacer started it (full bandwidth). */
  start?: number;
  /** Slowed at the brink of the end of its first pass. */
  brink?: number;
  /** The end of its first pass (the first report of pass 2). */
  firstPassEnd?: number;
  /** Braked at a crawl past its first pass. */
  brake?: number;
  /** Its source braked itself at the end of its first pass (reported then). */
  selfBrake?: number;
  /** Parked (busy, braked past its first pass while another member was still in its first pass), first time. */
  park?: number;
  /** Its source parked itself at a small pass while it hovered (ripe; reported then). */
  selfPark?: number;
  /** Hovering again after it was parked, last time. */
  unpark?: number;
  /** Released or landed: its last run began. */
  lastRun?: number;
  /** Its source confirmed its last run's settings (the control path's delay under load). */
  lastRunApplied?: number;
  /** Held at its switch-over. */
  held?: number;
}

export interface GroupMigrateResult {
  mode: GroupMode;
  moved: string[];
  stayed: string[];
  /** Last member resumed minus first (wall clock of their destinations' RESUME events, after the group's start); null when none resumed. */
  spreadMs: number | null;
  /** Last member held minus first (controller's clock). */
  heldSpreadMs: number | null;
  totalMs: number;
  members: GroupMemberResult[];
}

export interface Member extends GroupMember {
  agents: { source: AgentClient; destination: AgentClient };
  plan: MigrationPlan;
  journal: MigrateJournal;
  controller: AbortController;
  state: GroupMemberState;
  path: OpenedPath | null;
  prepared: boolean;
  progress: MigrationProgress | null;
  pace: {
    /** What its source runs with now. */
    applied: PaceSettings;
    braked: boolean;
    released: boolean;
    /** Started by the group (until then it waits at a crawl at the start of its pre-copy), and since when it waited. */
    started: boolean;
    waitingSince: number | null;
    startDelayMs: number;
    /** The settings calls to its source, one after another (a brake and its release must not cross). */
    sending: Promise<void>;
    brakedSince: number | null;
    brakedMs: number;
    lowest: number | null;
    /** Hovering (full bandwidth, 1 ms downtime limit) since hoverSince; landed (the group's limit again) at landedAt; released from the brink at releasedAt. */
    hovering: boolean;
    landed: boolean;
    hoverSince: number | null;
    hoveredMs: number;
    landedAt: number | null;
    releasedAt: number | null;
    /** When its last progress report came (performance.now()). */
    reportedAt: number;
    /** Best bandwidth and drain rate seen at full speed, and the last sample of its remaining memory. */
    bandwidthPeak: number;
    drainPeak: number;
    sample: { at: number; remaining: number; pass: number } | null;
    /** What its current pass began with (the largest remaining figure reported in it; 0 in its first pass). */
    passBytes: number;
    /** What the pass before its current one began with (0 until its third pass). */
    previousPassBytes: number;
    /** Its second pass (the first seen past its first), and what it began with: what its guest dirtied during its first pass. */
    secondPass: { pass: number; bytes: number } | null;
    /** Parked now (a busy member braked past its first pass while another is still in its first pass), and its dirty-sync count when it last hovered again after that. */
    parked: boolean;
    hoverPass: number;
    /** Its source braked itself at the end of its first pass (migrateOut's brakeAfterFirstPass), seen in a report. */
    selfBraked: boolean;
    /** Its source parked itself at a small pass while it hovered (setMigrationParameters' parkBelowBytes), seen in a report: ripe, it waits at a crawl for its last run. */
    selfParked: boolean;
    /** The last settings sent armed its source's park (parkBelowBytes). */
    parkArmed: boolean;
    /** Its source may wait held at its switch-over (else it sends itself back there): sent once true, never taken back (the controller still sends back one held alone). */
    holdAllowed: boolean;
    /** When each pacing step came (performance.now()), and its passes past the first (for the result). */
    marks: { [K in keyof PaceTimeline]?: number };
    passes: Array<{ pass: number; at: number; bytes: number; bandwidth: number; throttle: number }>;
  };
  heldAt: number | null;
  continuedAt: number | null;
  /** Wall clocks (ms since the epoch) of its switch-over, for the breakdown of its stop. */
  at: { held: number | null; continued: number | null; arrived: number | null; startSent: number | null; stopped: number | null };
  out: Promise<MigrateOutResult> | null;
  outcome: MigrateOutResult | null;
  incoming: IncomingResult | null;
  error: Error | null;
  /** Each time it was sent back (held alone): its guest's pause then (GroupMemberResult.sentBackMs). */
  sentBackMs: Array<number | null>;
}
