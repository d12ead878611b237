// How a group's pre-copies are paced so that every member reaches its
// switch-over (QEMU's pre-switchover point, where its guest stops) at about
// the same time, with its guest running until then ("brake light ones past
// the first pass, hover busy ones until ripe, and a timed last run").
//
// What was measured (QEMU 7.2, TCG, 256 MiB members, group of 8 on 2 cores):
// QEMU switches over when what is left after a dirty-bitmap sync fits its
// downtime limit at its bandwidth, and it syncs when what is left of a pass
// falls under that. A member that keeps sending (at full bandwidth, or even at
// 8 MiB/s) soon makes its passes small: a light guest's dirty set shrinks pass
// by pass until a sync finds (nearly) nothing, and it switches over alone,
// then waits held, guest stopped (3 of 8 light members at 8 MiB/s within
// 2-14 s, held 3-17 s; hovering at full bandwidth also cost the CPU the others
// needed and had auto-converge throttle light guests). A member braked to a
// crawl past its first pass sends about a page per rate period: what is left
// of its pass never runs out, no sync comes, and it waits, guest running, for
// as long as the group needs (with one memory channel: with multifd QEMU sends
// a batch of pages per period, ~5 MB/s, which run-group.ts avoids by the
// group's default of one channel). The end of the first pass is the moment
// to cross slowly: a light member at its brink is slowed (CROSS_BANDWIDTH,
// then SLOW_BANDWIDTH), so that its next passes last long enough to be seen
// and braked. Which member is busy is told by what its guest dirtied during
// its first pass (its second pass), not by the dirty rate sampled before it:
// QEMU samples 128 pages of a 256 MiB guest, and light members sampled as
// busy hovered and switched over alone (held 6.5-11.3 s in 3 runs of 4). A busy
// member hovering under load sends at 2-27 MiB/s (its guest and seven others
// take the CPU), so at the group's limit it switched over only when a sync
// happened to find little dirty (0.25-7 s after it was landed, an estimate
// from its dirty rate 0.85 s off): it now hovers until its passes are small
// (ripe), then lands with a limit that holds any of them, right after the
// light ones' release, and arrives with them. A first
// pass's time is not the bandwidth QEMU reports (zero pages cost a few bytes
// each), so each member's *drain rate* (how fast its remaining memory falls,
// seen while it runs at full speed) is what its time is estimated from.
//
// From every member's last progress (the runner asks on each progress report,
// about every 50 ms for a group member, and every 50 ms besides):
//   eta       what remains above what its downtime limit lets it stop with
//             (QEMU switches over then), at its drain rate in the first pass
//             plus the passes over what its guest dirties meanwhile (the
//             source samples the dirty rate before a group member starts:
//             QEMU measures none during the first pass), at its bandwidth
//             less its dirty rate later (Infinity when it does not converge),
//             less the time since its figures were reported while it runs at
//             full speed. A busy member's eta is the rest of its first pass
//             (0 after it). A member not measured at full speed yet is
//             estimated with the group's best rates (or a nominal rate before
//             anyone ran). A held member: 0.
//   gate      every member starts its pre-copy braked (a crawl, 1 ms downtime
//             limit: nothing moves, its guest runs); nobody starts until every
//             member is in its pre-copy (disk mirrors ready, dirty rate
//             sampled), so a member whose set-up was quick cannot run through
//             to its switch-over while the others are still being prepared
//             (measured: held 6.2 s at the barrier in a group of 8)
//   start     then the member that needs the longest starts first; each other
//             one starts when the slowest still on its way needs no more than
//             its own estimate plus LEAD_S (all started at once, the busy
//             one's first pass, the group's critical path, ended 34-39 s after
//             the gate against 22 s)
//   first     a started member runs its first pass at full bandwidth with a
//   pass      1 ms downtime limit ("hovering"); a light one (sampled under
//             HOVER_DIRTY_BYTES_PER_SECOND) within BRINK_S of its end (or at
//             most BRINK_BYTES left: a mostly-zero tail drains faster than any
//             rate measured before it) crosses that end slowed: its tail at
//             CROSS_BANDWIDTH, its last SLOW_TAIL_BYTES at SLOW_BANDWIDTH (all
//             at SLOW_BANDWIDTH took 4.4-12 s for tails of data)
//   brake     past its first pass a member whose second pass is under
//             HOVER_PASS_BYTES (light) is braked to a crawl (BRAKE_FLOOR, 1 ms
//             downtime limit; its source has braked itself there already, and
//             the runner counts it braked from that report): it waits, guest
//             running, with what its guest dirties piling up unsent (light
//             ones used to hover at full bandwidth and switched over alone);
//             one whose second pass is
//             larger (busy: its guest dirtied that much during its first
//             pass) hovers (full bandwidth, 1 ms limit: its dirty set never
//             fits, and auto-converge throttles it while the group waits),
//             also when it was slowed at its brink
//   park      a busy member past its first pass while another member is
//             still in its first pass waits braked at a crawl (parked: its
//             source braked itself there at the end of its first pass) until
//             every other member is past its first pass, then hovers and must
//             be ripe (two passes after it hovers: the first sends what its
//             guest dirtied while parked). Hovering, its passes shrink under
//             auto-converge's throttle and a sync soon finds nothing dirty: it
//             switched over alone and waited held, guest stopped, 1.1 s in a
//             group of 4 and 9.9 s in a group of 8 (quiet start, load 3-9),
//             while a light member's first pass went on. Parked only once
//             ripe, it still did so before the pacer saw it ripe (its passes
//             shrank from 35 to 0.6 MiB within 0.1 s, reported 0.3 s late:
//             held 0.7 s, QEMU downtime 1.1 s, in one group of 8 of 8). A
//             crawl holds a busy guest: what is left never runs out (its
//             guest dirties memory), so no sync comes; its guest runs
//             unthrottled meanwhile (no sync, no throttle step).
//   self-park a hovering member's source is asked to park itself at a crawl
//             at the start of a pass of at most ripeBytes (from the pass after
//             the one that sends what it dirtied while braked): its passes
//             shrank from 35 to 0.6 MiB within 0.1 s and a sync found nothing
//             dirty, so it switched over alone before the pacer, its reports
//             0.3 s late under load, saw it ripe (held 0.23 s, QEMU downtime
//             0.57 s, in one group of 8 of 4). Parked so, it is ripe; it waits
//             at a crawl and its last run comes with the braked ones' release,
//             landed (LAND_DOWNTIME_MS: a parked guest dirtied more).
//   last run  once every member is past its first pass (or held), and every
//             hovering one is ripe (its last two passes each fit RIPE_FACTOR
//             times what the group's limit lets it stop with at its
//             full-speed bandwidth; until then nobody goes), each braked
//             member is released (the group's settings: it completes at an
//             iteration boundary), the one whose last run takes longest first
//             (what it has left plus what its guest dirtied while braked,
//             taken as the size of its pass before, at its passes at the
//             group's limit, plus LAND_S), each other one when the longest
//             still on its way needs no more than its own plus the group's
//             window. One whose last run has no end by the estimate goes
//             alone and the others wait, guest running, until its estimate
//             comes within theirs or it is held. LAND_AFTER_S after the last
//             release each ripe hovering member lands (LAND_DOWNTIME_MS: it
//             switches over at its next sync). Released or landed, a member
//             is never braked again. (Measured before: a release from the
//             brink of the first pass, whose rest is data, was off by half its
//             1-3.5 s under load, and members waited held 1-3 s.)
// Members still mirroring disks or not reporting yet keep the gate closed.
// A member that reaches its switch-over alone all the same (its last passes
// outran its source's brake) while another is short of its first pass's end,
// or hovers busy and not ripe yet, is sent back to go again (arrivedAlone; its
// source when not allowed to hold, else the runner, rolls it back).
// Pure: the runner (run-group.ts) measures drain rates and pass sizes and
// applies the answers through setMigrationParameters.

export interface PacedMember {
  vmId: string;
  /** 'preparing' (no progress yet), 'disks', 'memory', 'held' or 'switching'. */
  phase: string;
  /** QEMU's dirty-sync count: 1 during the first pass over memory. */
  pass: number;
  remainingBytes: number;
  dirtyBytesPerSecond: number;
  /** The bandwidth QEMU reports for it at full speed (its last figure while it runs, else the best seen; 0: not measured yet). */
  bandwidthBytesPerSecond: number;
  /** The best bandwidth QEMU reported for it at full speed (0: not measured yet). */
  peakBandwidthBytesPerSecond: number;
  /** Seconds since its last run began (released or landed; 0 before). */
  lastRunS: number;
  /** The best rate its remaining memory fell at full speed (0: not measured yet). */
  drainBytesPerSecond: number;
  /** The group started it (it ran at full speed); until then it waits braked at the start of its pre-copy. */
  started: boolean;
  /** Braked now (the runner applied a crawl): waiting for its start, or at the brink. */
  braked: boolean;
  /** Released from the brink once: it keeps the group's settings. */
  released: boolean;
  /** Landed once (given the group's downtime limit after hovering): it keeps the group's settings. */
  landed: boolean;
  /** What its current pass began with (past its first pass: what its guest dirtied during the pass before; 0 in its first pass). */
  passBytes: number;
  /** What the pass before its current one began with (0 until its third pass). */
  previousPassBytes: number;
  /** What its second pass began with: what its guest dirtied during its first pass (0 until then); a busy guest hovers past its first pass. */
  secondPassBytes: number;
  /** Seconds since its figures were reported (its remaining memory fell meanwhile if it runs at full speed). */
  sinceReportS: number;
  /** Parked now: a busy member past its first pass waiting braked while another member is still in its first pass. */
  parked: boolean;
  /** Its dirty-sync count when it last hovered again after it was parked (0: never parked): ripe only two passes later. */
  hoverPass: number;
  /** Its source parked itself at the start of a pass of at most parkBelowBytes while it hovered: ripe, it waits at a crawl for its last run (landed). */
  selfParked: boolean;
}

export interface PaceSettings {
  maxBandwidthBytesPerSecond: number;
  downtimeLimitMs: number;
}

export interface PaceOptions extends PaceSettings {
  windowMs: number;
}

/**
 * A braked member's bandwidth cap. Very low: a zero page costs QEMU about 9 bytes, so an idle guest's zero
 * pages drain its remaining memory fast even at a crawl (measured: at 256 KiB/s ~100 MiB/s, at 16 KiB/s
 * ~7 MiB/s, and braked members of a group of 8 reached their switch-over braked). QEMU's cap is per 100 ms
 * window and lets one page past it, so it must stay above 10 B/s (a window of 0 means no cap): 1 KiB/s
 * sends about one page or a dozen zero pages a window.
 */
export const BRAKE_FLOOR = 2 ** 10;
/** A braked or hovering member's downtime limit: it converges only if nearly nothing is left. */
export const BRAKE_DOWNTIME_MS = 1;
/** How close to the end of its first pass (at full speed) a light member is slowed: a few progress reports. */
export const BRINK_S = 0.25;
/** At most this much left in its first pass: at the brink whatever its estimate (a mostly-zero tail drains at several hundred MiB/s). */
export const BRINK_BYTES = 24 * 2 ** 20;
/** How much earlier than the slowest's estimate a member is started: the control path's delay (the call, QEMU's next rate period, the report of its arrival). */
export const LEAD_S = 0.15;
/** A guest dirtying memory at least this fast (its sampled rate) is busy: it is not slowed at the brink of the end of its first pass, it runs through it (an idle guest dirties well under 1 MiB/s). */
export const HOVER_DIRTY_BYTES_PER_SECOND = 4 * 2 ** 20;
/**
 * A member whose guest dirtied at least this much during its first pass (its second pass's size) hovers past it. Not the
 * sampled rate: QEMU samples 128 pages of a 256 MiB guest, one dirtied page counts 2 MiB/s, and in groups of 8 light
 * members sampled at 4 MiB/s or more hovered and switched over alone (held 6.5-11.3 s) while the busy one sampled under
 * it; measured second passes: light members 1.1-1.8 MiB, the member rewriting 32 MiB 35 MiB.
 */
export const HOVER_PASS_BYTES = 4 * 2 ** 20;
/**
 * A light member's bandwidth cap from the brink of the end of its first pass until it is past that end: slow enough
 * that its next passes (what its guest dirtied meanwhile) last long enough for the runner to see it past its first pass
 * and brake it to a crawl (its threshold, this rate times the 1 ms downtime limit, is under a page: QEMU switches over
 * only if a sync finds nothing dirty), fast enough that it crosses the end of its first pass within seconds. (At 8
 * MiB/s with the 1 ms limit light members iterated in passes of 0.5-1 MiB, were throttled by auto-converge, and three
 * of eight found nothing dirty within 2-14 s and switched over alone.)
 */
export const SLOW_BANDWIDTH = 4 * 2 ** 20;
/**
 * A light member's bandwidth cap from the brink of the end of its first pass until SLOW_TAIL_BYTES are left: its tail
 * holds data (15-26 MiB), which at SLOW_BANDWIDTH took 4.4-12 s to cross, on the group's critical path for the last
 * one. Its threshold (16 KiB at the 1 ms limit) is four pages: should a zero tail end its first pass at this rate, a
 * sync must find under four pages dirty for it to switch over before the runner brakes it at its next report.
 */
export const CROSS_BANDWIDTH = 16 * 2 ** 20;
/** The last of its first pass it crosses at SLOW_BANDWIDTH. */
export const SLOW_TAIL_BYTES = 4 * 2 ** 20;
/**
 * A hovering member lands with this downtime limit (or the group's, if higher): at QEMU's next rate period (100 ms) its
 * threshold (its bandwidth then, 2-27 MiB/s measured while it hovered under load, times this) holds any pass it had,
 * so it switches over at its next sync, whatever its guest dirtied meanwhile (it is landed only when ripe: its passes
 * fit its full-speed bandwidth times the group's limit). At the group's limit it switched over when a sync happened to
 * find little dirty: 0.25-7 s after its landing, its passes 0.1-35 MiB.
 */
export const LAND_DOWNTIME_MS = 1000;
/**
 * A hovering member is ripe when its last two passes each fit this many times what the group's limit lets it stop with at
 * its full-speed bandwidth: its stop sends one such pass at the speed of a stopped guest's last pages (21.5 MiB in 268
 * ms, 0.7-3.6 MiB in 137-218 ms with the device state, 8 members switching at once), and at once (1x) it waited 12-16 s
 * past its first pass for two such passes.
 */
export const RIPE_FACTOR = 2;
/**
 * How long after the last braked member's release a ripe hovering member lands: a braked one's last run waits for QEMU's
 * next rate period (its crawl sleeps to its end), sends the rest of its pass and its pile at full speed, and switches over
 * at the sync after the period that measured that speed; a landed one only at its next period's sync.
 */
export const LAND_AFTER_S = 0.15;
/** What a braked member adds to its last run: QEMU measures its new bandwidth (the threshold it switches over at) over its next 100 ms period, and it sends what its guest dirtied while braked. */
export const LAND_S = 0.15;
/** The drain rate assumed before any member of the group ran at full speed (only the order of the starts depends on it then). */
export const NOMINAL_BYTES_PER_SECOND = 200 * 2 ** 20;

/** Seconds a member still needs, at full speed, to reach its switch-over (Infinity when it does not converge). */
export function secondsToConverge(m: Pick<PacedMember, 'phase' | 'pass' | 'remainingBytes' | 'dirtyBytesPerSecond' | 'bandwidthBytesPerSecond' | 'drainBytesPerSecond'>, downtimeLimitMs: number): number {
  if (m.phase === 'held' || m.phase === 'switching') return 0;
  // QEMU switches over once what remains fits in the downtime limit at the bandwidth it measures.
  const stopWith = (m.bandwidthBytesPerSecond * downtimeLimitMs) / 1000;
  if (m.remainingBytes <= stopWith) return 0;
  if (m.pass <= 1) {
    const rate = m.drainBytesPerSecond > 0 ? m.drainBytesPerSecond : m.bandwidthBytesPerSecond;
    if (rate <= 0) return Number.POSITIVE_INFINITY;
    const bulk = (m.remainingBytes - stopWith) / rate;
    if (m.dirtyBytesPerSecond <= 0) return bulk;
    // Then the passes over what it dirtied meanwhile (at least a second's worth).
    return bulk + secondsToConverge({ ...m, pass: 2, remainingBytes: m.dirtyBytesPerSecond * Math.max(bulk, 1) }, downtimeLimitMs);
  }
  const net = m.bandwidthBytesPerSecond - m.dirtyBytesPerSecond;
  return net > 0 ? (m.remainingBytes - stopWith) / net : Number.POSITIVE_INFINITY;
}

/** Past its first pass, or its guest dirties memory (HOVER_DIRTY_BYTES_PER_SECOND): it iterates with a 1 ms downtime limit when it runs. */
export function busy(m: Pick<PacedMember, 'pass' | 'dirtyBytesPerSecond'>): boolean {
  return m.pass >= 2 || m.dirtyBytesPerSecond >= HOVER_DIRTY_BYTES_PER_SECOND;
}

/** Its guest dirtied HOVER_PASS_BYTES or more during its first pass: past it, it hovers (full bandwidth, 1 ms downtime limit) instead of waiting at a crawl, so that auto-converge throttles it while the group waits. */
export function hovers(m: Pick<PacedMember, 'secondPassBytes'>): boolean {
  return m.secondPassBytes >= HOVER_PASS_BYTES;
}

/**
 * A hovering member whose last two passes each fit what the group's downtime limit lets it stop with at its full-speed
 * bandwidth (its best seen, else the group's): landed (LAND_DOWNTIME_MS), its stop sends one such pass. (Not at the
 * bandwidth QEMU reports while it hovers: its syncs, one per pass, and the CPU the others' guests take keep that at
 * 2-27 MiB/s under load, where the group's 150 ms fit under 1-4 MiB and it waited 60 s to be ripe.)
 */
export function ripe(m: Pick<PacedMember, 'phase' | 'pass' | 'passBytes' | 'previousPassBytes' | 'peakBandwidthBytesPerSecond' | 'parked' | 'hoverPass' | 'selfParked'>, downtimeLimitMs: number, groupBandwidthBytesPerSecond: number): boolean {
  // Its source saw a pass small enough and parked it: ripe.
  if (m.phase !== 'memory' || m.selfParked) return true;
  // Parked, or hovering again since less than two passes: its passes do not say what its guest dirtied while parked.
  if (m.parked || m.pass < m.hoverPass + 2) return false;
  return Math.max(m.passBytes, m.previousPassBytes) <= ripeBytes(m, downtimeLimitMs, groupBandwidthBytesPerSecond);
}

/** The largest pass a hovering member may have to be ripe: RIPE_FACTOR times what the group's limit lets it stop with at its full-speed bandwidth (its best seen, else the group's). */
export function ripeBytes(m: Pick<PacedMember, 'peakBandwidthBytesPerSecond'>, downtimeLimitMs: number, groupBandwidthBytesPerSecond: number): number {
  const rate = m.peakBandwidthBytesPerSecond > 0 ? m.peakBandwidthBytesPerSecond : groupBandwidthBytesPerSecond;
  return Math.floor((RIPE_FACTOR * rate * downtimeLimitMs) / 1000);
}

/** On its last run (released from the brink, or landed): it keeps the group's settings. */
function onLastRun(m: Pick<PacedMember, 'released' | 'landed'>): boolean {
  return m.released || m.landed;
}

/**
 * A member held at its switch-over before its last run (neither released nor landed: its last passes ran out before
 * its source could brake it, QEMU 7.2 taking a new limit only at its next 100 ms period) while another member has not
 * yet reached the end of its first pass (not started, its disks still mirroring, or in its first pass), or hovers busy
 * and is not ripe yet, would wait held, its guest stopped, for seconds (1.3-6.9 s in 7 of 16 groups of 8 measured
 * before; 1.7 and 2.2 s behind a busy member not ripe yet, in 2 of 6 after the first pass alone was looked at): it is
 * sent back instead (its migration rolled back, its guest runs on at its source, a pause of a few hundred ms) and goes
 * again, paced anew. Braked members past their first pass hold nobody up: the last runs come once every hovering
 * one is ripe.
 */
export function arrivedAlone(held: Pick<PacedMember, 'released' | 'landed'>, others: PacedMember[], downtimeLimitMs: number): boolean {
  if (onLastRun(held)) return false;
  const bandwidth = Math.max(0, ...others.map((o) => o.bandwidthBytesPerSecond)) || NOMINAL_BYTES_PER_SECOND;
  const unripe = (o: PacedMember) => hovers(o) && !onLastRun(o) && !ripe(o, downtimeLimitMs, bandwidth);
  return others.some((o) => o.phase !== 'held' && (!o.started || o.phase !== 'memory' || o.pass < 2 || unripe(o)));
}

export interface PaceDecision {
  settings: PaceSettings;
  /** Runs at a crawl now (waiting for its start, or at the brink). */
  braked: boolean;
  /** Started (it runs, or ran, at full speed). */
  started: boolean;
  /** Hovers now: full bandwidth, 1 ms downtime limit. */
  hovering: boolean;
  /** Parked now (a busy member braked past its first pass while another member is still in its first pass). */
  parked: boolean;
  /**
   * A busy member hovering past its first pass: its source parks itself at the start of a pass of at most belowBytes
   * (ripe: ripeBytes) from pass fromPass on (after the pass that sends what its guest dirtied while it was braked); null
   * otherwise.
   */
  park: { belowBytes: number; fromPass: number } | null;
  etaSeconds: number;
}

/** In its pre-copy with its first figures (or already at its switch-over): the group can pace it. */
function inPrecopy(m: PacedMember): boolean {
  // (Past its first pass a member often reports nothing left between two syncs: it is in its pre-copy all the same.)
  return m.phase === 'held' || m.phase === 'switching' || (m.phase === 'memory' && (m.pass >= 2 || (m.pass >= 1 && m.remainingBytes > 0)));
}

/** What each member in pre-copy should run with now, by VM id. */
export function paceGroup(members: PacedMember[], options: PaceOptions): Map<string, PaceDecision> {
  const full: PaceSettings = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: options.downtimeLimitMs };
  const crawl: PaceSettings = { maxBandwidthBytesPerSecond: Math.min(options.maxBandwidthBytesPerSecond, BRAKE_FLOOR), downtimeLimitMs: Math.min(BRAKE_DOWNTIME_MS, options.downtimeLimitMs) };
  const hover: PaceSettings = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: crawl.downtimeLimitMs };
  const slow: PaceSettings = { maxBandwidthBytesPerSecond: Math.min(options.maxBandwidthBytesPerSecond, SLOW_BANDWIDTH), downtimeLimitMs: crawl.downtimeLimitMs };
  // Landed (a hovering member's last run): it switches over at its next sync.
  const land: PaceSettings = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: Math.max(options.downtimeLimitMs, LAND_DOWNTIME_MS) };
  const cross: PaceSettings = { maxBandwidthBytesPerSecond: Math.min(options.maxBandwidthBytesPerSecond, CROSS_BANDWIDTH), downtimeLimitMs: crawl.downtimeLimitMs };
  const copying = members.filter((m) => m.phase === 'memory');
  // The group's best rates stand in for those of a member not measured at full speed yet.
  const drain = Math.max(0, ...members.map((m) => m.drainBytesPerSecond)) || Math.max(0, ...members.map((m) => m.bandwidthBytesPerSecond)) || NOMINAL_BYTES_PER_SECOND;
  const bandwidth = Math.max(0, ...members.map((m) => m.bandwidthBytesPerSecond)) || drain;
  const etaOfMember = (m: PacedMember): number => {
    const rated = m.bandwidthBytesPerSecond > 0 ? { ...m, drainBytesPerSecond: m.drainBytesPerSecond || drain } : { ...m, bandwidthBytesPerSecond: bandwidth, drainBytesPerSecond: drain };
    // A busy member needs the rest of its first pass; after it, it hovers and can land at any time.
    const eta = busy(m) && !onLastRun(m) ? (m.phase !== 'memory' || m.pass >= 2 ? 0 : secondsToConverge({ ...rated, dirtyBytesPerSecond: 0 }, 0)) : secondsToConverge(rated, options.downtimeLimitMs);
    // Running at full speed, it went on since its last report.
    return m.started && !m.braked && m.phase === 'memory' ? Math.max(0, eta - m.sinceReportS) : eta;
  };
  const eta = new Map(members.map((m) => [m.vmId, etaOfMember(m)]));
  const etaOf = (m: PacedMember) => eta.get(m.vmId) ?? 0;
  const decisions = new Map<string, PaceDecision>();
  // A crawl in its first pass is the crossing of its end: across most of its tail, then slowly over its last SLOW_TAIL_BYTES.
  const crawlOf = (m: PacedMember, started: boolean) => (started && m.phase === 'memory' && m.pass <= 1 ? (m.remainingBytes > SLOW_TAIL_BYTES ? cross : slow) : crawl);
  // A member its source parked (ripe) runs its last run landed, as a hovering one does.
  const decide = (m: PacedMember, how: 'crawl' | 'full' | 'hover' | 'park', started: boolean) =>
    decisions.set(m.vmId, {
      settings: how === 'crawl' || how === 'park' ? crawlOf(m, started) : how === 'hover' ? hover : m.landed || (how === 'full' && m.selfParked) || (how === 'full' && m.started && !m.braked && !m.released && m.pass >= 2 && members.length > 1) ? land : full,
      braked: how === 'crawl' || how === 'park',
      started,
      hovering: how === 'hover',
      parked: how === 'park',
      park: how === 'hover' && m.pass >= 2 && hovers(m) && members.length > 1 ? { belowBytes: ripeBytes(m, options.downtimeLimitMs, bandwidth), fromPass: m.parked ? m.pass + 2 : Math.max(m.hoverPass + 2, m.pass + 1) } : null,
      etaSeconds: etaOf(m),
    });
  if (members.length < 2) {
    for (const m of copying) decide(m, 'full', true);
    return decisions;
  }
  // A started member runs at full bandwidth with a 1 ms downtime limit until its last run.
  const running = (m: PacedMember) => (onLastRun(m) ? 'full' : 'hover');
  // Gate: until every member is in its pre-copy nothing changes (those waiting for their start stay braked).
  if (!members.every(inPrecopy)) {
    for (const m of copying) decide(m, m.parked ? 'park' : m.braked || !m.started ? 'crawl' : running(m), m.started);
    return decisions;
  }
  const waiting = copying.filter((m) => !m.started);
  const goingOn = copying.filter((m) => m.started && !m.braked);
  const nobodyStarted = goingOn.length === 0 && copying.every((m) => !m.started) && members.every((m) => m.phase === 'memory');
  // start: the longest first; then each when the slowest on its way needs no more than it (plus the lead). (Started all
  // at once, the busy member's first pass, the group's critical path, shared the CPU with seven others: it ended 34-39 s
  // after the gate opened, against 22-30 s with the light ones started after it.)
  const finishOf = (ms: PacedMember[]) => Math.max(0, ...ms.map(etaOf));
  const longest = finishOf(waiting);
  const finish = finishOf(goingOn);
  // At the gate only the longest starts (the others follow once it is measured, when it needs no more than they do).
  const starting = waiting.filter((m) => (nobodyStarted ? etaOf(m) >= longest : goingOn.length === 0 || finish <= etaOf(m) + LEAD_S));
  for (const m of waiting) decide(m, starting.includes(m) ? running(m) : 'crawl', starting.includes(m));
  // Ready: it waits for the group (held, braked or hovering past its first pass), or is on its last run.
  const atBrink = (m: PacedMember) => etaOf(m) <= BRINK_S || m.remainingBytes <= BRINK_BYTES;
  const ready = (m: PacedMember) => m.phase === 'held' || m.phase === 'switching' || onLastRun(m) || m.pass >= 2;
  // brake: a light member at the brink of the end of its first pass crosses it slowed, and past it waits at a crawl
  // (later a crawl does not hold it: QEMU finds nothing dirty in an idle guest and switches over); one whose guest
  // dirtied HOVER_PASS_BYTES or more during its first pass hovers past it (also when it was slowed at its brink: its
  // sampled dirty rate said light).
  // park: a busy member past its first pass waits at a crawl while another member is still in its first pass (hovering,
  // a sync soon finds nothing dirty and it switches over alone, sooner than the pacer can see it ripe); parked, it stays
  // so until every other one is past it.
  const othersOnFirstPass = (m: PacedMember) => members.some((o) => o.vmId !== m.vmId && o.phase === 'memory' && !ready(o));
  const parks = (m: PacedMember) => m.pass >= 2 && hovers(m) && !onLastRun(m) && othersOnFirstPass(m);
  for (const m of goingOn) {
    decide(m, parks(m) ? 'park' : !onLastRun(m) && ((!busy(m) && atBrink(m)) || (m.pass >= 2 && !hovers(m))) ? 'crawl' : running(m), true);
  }
  const braked = copying.filter((c) => c.started && c.braked);
  // (One its source parked, ripe, waits at a crawl for its last run. One on its last run goes on with it: braked, it
  // was parked by its source after its landing was decided, which reached the source late, decided on the pass before
  // it parked, and was ignored; it waited at a crawl for 5 min while the others waited held, guest stopped.)
  for (const m of braked) decide(m, onLastRun(m) ? 'full' : parks(m) ? 'park' : m.pass >= 2 && hovers(m) && !m.selfParked ? 'hover' : 'crawl', true);
  // Until every member is ready, braked members stay braked and the others hover.
  if (members.some((m) => m.phase === 'memory' && !ready(m))) return decisions;
  // Then the last run. Each braked member is released (the group's settings), the one whose last run takes longest
  // first, so that they arrive together; a hovering member lands (LAND_DOWNTIME_MS) once it is ripe and LAND_AFTER_S
  // after the last braked one's release, so that it arrives with them: until it is ripe (its guest throttled by
  // auto-converge meanwhile) nobody goes. (Landed at the group's limit, it arrived 0.25-7 s later, when a sync happened to
  // find little dirty, and the others, released on an estimate from its dirty rate, waited held up to 0.85 s or it did
  // 0.2 s; a release of the braked ones on the slowest's estimate came too early under load.)
  const waitingToGo = copying.filter((m) => m.started && !onLastRun(m));
  const hoveringNow = (m: PacedMember) => decisions.get(m.vmId)?.hovering ?? false;
  const hoverers = waitingToGo.filter(hoveringNow);
  if (hoverers.some((m) => !ripe(m, options.downtimeLimitMs, bandwidth))) return decisions;
  const lastRunOf = (m: PacedMember) => {
    const rate = m.bandwidthBytesPerSecond > 0 ? m.bandwidthBytesPerSecond : bandwidth;
    // Past its first pass: its passes at the group's downtime limit; in it, the rest of its pass at the bytes QEMU sends
    // (the tail of an idle guest's memory holds data, not zero pages: measured at the rate QEMU reports, 1.5-2.6 s for
    // 15-26 MiB at load 20, where its drain rate said 0.2 s).
    // Braked past its first pass, it also sends what its guest dirtied meanwhile (no sync counts it: taken as its pass's
    // size, what it dirtied during its pass before).
    const own = m.pass >= 2 ? secondsToConverge({ ...m, remainingBytes: m.remainingBytes + (m.braked ? m.passBytes : 0), bandwidthBytesPerSecond: rate }, options.downtimeLimitMs) : m.remainingBytes / rate;
    return m.braked ? own + LAND_S : Math.max(0, own - m.sinceReportS);
  };
  const brakedToGo = waitingToGo.filter((m) => !hoveringNow(m));
  const goers = copying.filter((m) => onLastRun(m) && !m.landed);
  const arrival = Math.max(0, ...(goers.length > 0 ? goers : brakedToGo).map(lastRunOf));
  const windowS = options.windowMs / 1000;
  for (const m of brakedToGo) {
    // One whose last run has no end by the estimate (it dirties faster than it sends: auto-converge's throttle must
    // help) goes first, and the others wait, guest running, until its estimate comes within their own or it is held
    // (they used to go with it and wait held, guest stopped, 2-3 s, while its throttle caught up).
    const go = lastRunOf(m) + windowS >= arrival;
    // Not its turn: it waits braked (at full bandwidth a light one would reach its end early).
    decide(m, go ? 'full' : 'crawl', true);
  }
  // The ripe hovering ones land once every braked one has been released for LAND_AFTER_S.
  const released = copying.filter((m) => m.released);
  const landNow = brakedToGo.length === 0 && released.every((m) => m.lastRunS >= LAND_AFTER_S);
  for (const m of hoverers) decide(m, landNow ? 'full' : 'hover', true);
  return decisions;
}
