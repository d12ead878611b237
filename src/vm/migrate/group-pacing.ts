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
//   slowest   the largest eta sets the pace (when it is not finite, nobody is
//             braked: the group falls back to waiting at the barrier)
//   brake     a member whose eta is more than the window below the slowest's
//             runs at a crawl (a bandwidth cap of twice its dirty rate, at
//             least BRAKE_FLOOR) with a low downtime limit, so it stays in
//             pre-copy with its guest running
//   release   once the slowest is within the window of a braked member's
//             eta (at full speed), that member gets the group's bandwidth cap
//             and downtime limit again: both end their pre-copy about
//             together. A released member is never braked again.
// Members still mirroring disks make the pace unknown: nobody is braked yet.
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

/** The lowest bandwidth a braked member gets (it still sends its dirtied pages slowly). */
export const BRAKE_FLOOR = 256 * 2 ** 10;
/** A braked member's downtime limit: it converges only if nearly nothing is left. */
export const BRAKE_DOWNTIME_MS = 1;

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
  const slowest = Math.max(...eta.values());
  if (!Number.isFinite(slowest)) return decisions;
  for (const m of copying) {
    if (m.released) continue;
    const mine = eta.get(m.vmId) ?? slowest;
    if ((slowest - mine) * 1000 <= options.windowMs) continue;
    const crawl = Math.round(Math.min(options.maxBandwidthBytesPerSecond, Math.max(BRAKE_FLOOR, 2 * m.dirtyBytesPerSecond)));
    decisions.set(m.vmId, { settings: { maxBandwidthBytesPerSecond: crawl, downtimeLimitMs: Math.min(BRAKE_DOWNTIME_MS, options.downtimeLimitMs) }, braked: true, etaSeconds: mine });
  }
  return decisions;
}
