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
// Each tick, from every member's last progress:
//   eta       what remains above what its downtime limit lets it stop with
//             (QEMU switches over then), at its drain rate in the first pass
//             plus the passes over what its guest dirties meanwhile (the
//             source samples the dirty rate before a group member starts:
//             QEMU measures none during the first pass), at its bandwidth
//             less its dirty rate later (Infinity when it does not converge).
//             A held member: 0.
//   brake     a member at the brink (eta at full speed within BRINK_S) while
//             another member still on its way (not braked, not held) needs
//             more than the window longer runs at a crawl (BRAKE_FLOOR) with a
//             1 ms downtime limit: it stays in pre-copy, guest running, just
//             short of its switch-over (what its guest dirties meanwhile is
//             sent after its release)
//   release   when every member not braked is held at its switch-over, the
//             braked ones get the group's bandwidth and downtime limit back;
//             being at the brink, they get there within about BRINK_S. (A
//             release on the slowest's estimate alone came too early under
//             load: its remaining memory rises again at each pass.) A
//             released member is never braked again.
// Members still mirroring disks make the pace unknown: nobody is braked then.
// Pure: the runner (run-group.ts) measures drain rates and applies the
// answers through setMigrationParameters.

export interface PacedMember {
  vmId: string;
  phase: string;
  /** QEMU's dirty-sync count: 1 during the first pass over memory. */
  pass: number;
  remainingBytes: number;
  dirtyBytesPerSecond: number;
  /** The best bandwidth QEMU reported for it at full speed. */
  bandwidthBytesPerSecond: number;
  /** The best rate its remaining memory fell at full speed (0: not measured yet). */
  drainBytesPerSecond: number;
  /** Braked now (the runner applied a crawl). */
  braked: boolean;
  /** Released once: it keeps the group's settings. */
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
/** How close to its switch-over (at full speed) a member is braked: longer than a pacer tick and a progress report. */
export const BRINK_S = 0.4;

/** Seconds a member still needs, at full speed, to reach its switch-over (Infinity when it does not converge). */
export function secondsToConverge(m: PacedMember, downtimeLimitMs: number): number {
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
  braked: boolean;
  etaSeconds: number;
}

/** What each member in pre-copy should run with now, by VM id. */
export function paceGroup(members: PacedMember[], options: PaceOptions): Map<string, PaceDecision> {
  const full: PaceSettings = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: options.downtimeLimitMs };
  const copying = members.filter((m) => m.phase === 'memory');
  const eta = new Map(members.map((m) => [m.vmId, secondsToConverge(m, options.downtimeLimitMs)]));
  const decisions = new Map<string, PaceDecision>(copying.map((m) => [m.vmId, { settings: full, braked: false, etaSeconds: eta.get(m.vmId) ?? 0 }]));
  if (members.some((m) => m.phase === 'disks') || members.length < 2) return decisions;
  // A member not measured yet (no progress, no rate) is unknown: nobody is braked on a guess.
  if (copying.some((m) => m.bandwidthBytesPerSecond <= 0)) return decisions;
  // Those still on their way to the switch-over set the pace; when none is left, every braked member is released.
  const onTheirWay = members.filter((m) => m.phase !== 'held' && m.phase !== 'switching' && !m.braked);
  if (onTheirWay.length === 0) return decisions;
  for (const m of copying) {
    if (m.released) continue;
    const mine = eta.get(m.vmId) ?? 0;
    const slower = onTheirWay.some((o) => o.vmId !== m.vmId && ((eta.get(o.vmId) ?? 0) - mine) * 1000 > options.windowMs);
    if (!m.braked && (mine > BRINK_S || !slower)) continue;
    const crawl = Math.min(options.maxBandwidthBytesPerSecond, BRAKE_FLOOR);
    decisions.set(m.vmId, { settings: { maxBandwidthBytesPerSecond: crawl, downtimeLimitMs: Math.min(BRAKE_DOWNTIME_MS, options.downtimeLimitMs) }, braked: true, etaSeconds: mine });
  }
  return decisions;
}
