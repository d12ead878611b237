// How a group's pre-copies are paced so that every member reaches its
// switch-over (QEMU's pre-switchover point, where its guest stops) at about
// the same time, with its guest running until then ("brake and release").
//
// What was measured (QEMU 7.2, TCG, 256 MiB members): an idle member finishes
// its first pass over memory long before a member whose guest rewrites memory,
// and once that pass is done it converges whatever its downtime limit: its
// dirty set after a bitmap sync is often empty, and QEMU switches over when
// nothing is left. So no QEMU parameter keeps an idle member iterating after
// its first pass; what can be timed is the end of that pass. Its time is not
// the bandwidth QEMU reports (zero pages cost a few bytes each), so each
// member's *drain rate* (how fast its remaining memory falls, seen while it
// runs at full speed) is what its time to converge is estimated from.
//
// From every member's last progress (the runner asks on each progress report
// and every 50 ms):
//   eta       what remains above what its downtime limit lets it stop with
//             (QEMU switches over then), at its drain rate in the first pass
//             plus the passes over what its guest dirties meanwhile (the
//             source samples the dirty rate before a group member starts:
//             QEMU measures none during the first pass), at its bandwidth
//             less its dirty rate later (Infinity when it does not converge).
//             A member not measured at full speed yet is estimated with the
//             group's best rates (or a nominal rate before anyone ran).
//             A held member: 0.
//   gate      every member starts its pre-copy braked (a crawl, 1 ms downtime
//             limit: nothing moves, its guest runs); nobody starts until every
//             member is in its pre-copy (disk mirrors ready, dirty rate
//             sampled), so a member whose set-up was quick cannot run through
//             to its switch-over while the others are still being prepared
//             (measured: held 6.2 s at the barrier in a group of 8)
//   start     then the member that needs the longest starts first; each other
//             one starts when the slowest still on its way (`finish`) needs no
//             more than its own estimate plus LEAD_S: so light members start
//             late and finish with the heavy one instead of waiting for it
//             held (a delayed start)
//   brake     a safety net for estimates that were wrong: a member at the
//             brink of the end of its first pass (eta within BRINK_S) while
//             the slowest on its way needs more than the window longer runs
//             at a crawl (BRAKE_FLOOR) with a 1 ms downtime limit: it stays in
//             pre-copy, guest running (only in the first pass: later an idle
//             guest's dirty set is often empty and QEMU switches over at any
//             speed)
//   release   a braked member gets the group's settings back when nobody is
//             on its way any more (all others held or braked); a released
//             member is never braked again. (A release on the slowest's
//             estimate came too early under load: its estimate is optimistic,
//             its remaining memory rises again at each pass.)
// Members still mirroring disks or not reporting yet keep the gate closed.
// Pure: the runner (run-group.ts) measures drain rates and applies the
// answers through setMigrationParameters.

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
  /** The best rate its remaining memory fell at full speed (0: not measured yet). */
  drainBytesPerSecond: number;
  /** The group started it (it ran at full speed); until then it waits braked at the start of its pre-copy. */
  started: boolean;
  /** Braked now (the runner applied a crawl): waiting for its start, or at the brink. */
  braked: boolean;
  /** Released from the brink once: it keeps the group's settings. */
  released: boolean;
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
/** A braked member's downtime limit: it converges only if nearly nothing is left. */
export const BRAKE_DOWNTIME_MS = 1;
/** How close to its switch-over (at full speed) a member is braked: longer than a progress report. */
export const BRINK_S = 0.4;
/** How much earlier than the slowest's estimate a member is started or released: the control path's delay (the call, QEMU's next rate period, the report of its arrival). */
export const LEAD_S = 0.15;
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

export interface PaceDecision {
  settings: PaceSettings;
  /** Runs at a crawl now (waiting for its start, or at the brink). */
  braked: boolean;
  /** Started (it runs, or ran, at full speed). */
  started: boolean;
  etaSeconds: number;
}

/** In its pre-copy with its first figures (or already at its switch-over): the group can pace it. */
function inPrecopy(m: PacedMember): boolean {
  return m.phase === 'held' || m.phase === 'switching' || (m.phase === 'memory' && m.pass >= 1 && m.remainingBytes > 0);
}

/** What each member in pre-copy should run with now, by VM id. */
export function paceGroup(members: PacedMember[], options: PaceOptions): Map<string, PaceDecision> {
  const full: PaceSettings = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: options.downtimeLimitMs };
  const crawl: PaceSettings = { maxBandwidthBytesPerSecond: Math.min(options.maxBandwidthBytesPerSecond, BRAKE_FLOOR), downtimeLimitMs: Math.min(BRAKE_DOWNTIME_MS, options.downtimeLimitMs) };
  const copying = members.filter((m) => m.phase === 'memory');
  // The group's best rates stand in for those of a member not measured at full speed yet.
  const drain = Math.max(0, ...members.map((m) => m.drainBytesPerSecond)) || Math.max(0, ...members.map((m) => m.bandwidthBytesPerSecond)) || NOMINAL_BYTES_PER_SECOND;
  const bandwidth = Math.max(0, ...members.map((m) => m.bandwidthBytesPerSecond)) || drain;
  const eta = new Map(members.map((m) => [m.vmId, secondsToConverge(m.bandwidthBytesPerSecond > 0 ? { ...m, drainBytesPerSecond: m.drainBytesPerSecond || drain } : { ...m, bandwidthBytesPerSecond: bandwidth, drainBytesPerSecond: drain }, options.downtimeLimitMs)]));
  const etaOf = (m: PacedMember) => eta.get(m.vmId) ?? 0;
  const decisions = new Map<string, PaceDecision>();
  const decide = (m: PacedMember, braked: boolean, started: boolean) => decisions.set(m.vmId, { settings: braked ? crawl : full, braked, started, etaSeconds: etaOf(m) });
  if (members.length < 2) {
    for (const m of copying) decide(m, false, true);
    return decisions;
  }
  // Gate: until every member is in its pre-copy nothing changes (those waiting for their start stay braked).
  if (!members.every(inPrecopy)) {
    for (const m of copying) decide(m, m.braked || !m.started, m.started);
    return decisions;
  }
  const windowS = options.windowMs / 1000;
  const waiting = copying.filter((m) => !m.started);
  const running = copying.filter((m) => m.started && !m.braked);
  const atBrink = copying.filter((m) => m.started && m.braked);
  const nobodyStarted = running.length === 0 && atBrink.length === 0 && members.every((m) => m.phase === 'memory');
  // start: the longest first; then each when the slowest on its way needs no more than it (plus the lead).
  const finishOf = (ms: PacedMember[]) => Math.max(0, ...ms.map(etaOf));
  const longest = finishOf(waiting);
  let finish = finishOf(running);
  // At the gate only the longest starts (the others follow once it is measured, when it needs no more than they do).
  const starting = waiting.filter((m) => (nobodyStarted ? etaOf(m) >= longest : running.length === 0 || finish <= etaOf(m) + LEAD_S));
  for (const m of waiting) decide(m, !starting.includes(m), starting.includes(m));
  finish = Math.max(finish, finishOf(starting));
  const onTheirWay = [...running, ...starting];
  // brake: a member at the brink of the end of its first pass while the slowest on its way needs more than the window
  // longer (later a crawl does not hold it: QEMU finds nothing dirty in an idle guest and switches over).
  for (const m of running) {
    const slowest = finishOf(onTheirWay.filter((o) => o !== m));
    decide(m, !m.released && m.pass <= 1 && etaOf(m) <= BRINK_S && slowest - etaOf(m) > windowS, true);
  }
  // release: when nobody is on its way any more (all others held or braked). A release on the slowest's estimate came
  // too early under load (measured: braked members of a group of 8 released 1.3 s before the heavy one arrived).
  for (const m of atBrink) decide(m, onTheirWay.length > 0, true);
  return decisions;
}
