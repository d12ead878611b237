// How a group's pre-copies are paced so that they reach their switch-over at
// about the same time: from each member's last progress (memory still to
// send, dirty rate, bandwidth) its time to converge is estimated; the slowest
// member sets the pace, and a member that would finish more than the window
// before it gets a lower bandwidth cap, enough to send what remains (and what
// its guest dirties meanwhile) by then, never below twice its dirty rate (so
// it still converges) nor a floor. Members close to the pace, and every
// member once the slowest is within the window, run at the group's cap.
// Members still mirroring disks or held are left alone. The runner passes
// each member's best bandwidth seen, not its paced one. Pure: the runner
// (run-group.ts) applies what it answers through setMigrationSpeed.

export interface PacedMember {
  vmId: string;
  phase: string;
  remainingBytes: number;
  dirtyBytesPerSecond: number;
  bandwidthBytesPerSecond: number;
}

export const MIN_GROUP_SPEED = 2 * 2 ** 20;

/** Seconds a member in pre-copy still needs at its current bandwidth (Infinity when it does not converge). */
export function secondsToConverge(m: PacedMember): number {
  const net = m.bandwidthBytesPerSecond - m.dirtyBytesPerSecond;
  return net > 0 ? m.remainingBytes / net : Number.POSITIVE_INFINITY;
}

/** The bandwidth cap each member in pre-copy should have now, by VM id. */
export function paceGroup(members: PacedMember[], options: { maxBytesPerSecond: number; windowMs: number }): Map<string, number> {
  const copying = members.filter((m) => m.phase === 'memory' && m.bandwidthBytesPerSecond > 0);
  const speeds = new Map<string, number>(copying.map((m) => [m.vmId, options.maxBytesPerSecond]));
  // Members still mirroring disks have not started their memory: they set the pace too, unknown yet, so nobody is slowed.
  if (members.some((m) => m.phase === 'disks') || copying.length < 2) return speeds;
  const eta = new Map(copying.map((m) => [m.vmId, secondsToConverge(m)]));
  const slowest = Math.max(...eta.values());
  if (!Number.isFinite(slowest) || slowest * 1000 <= options.windowMs) return speeds;
  for (const m of copying) {
    const mine = eta.get(m.vmId) ?? slowest;
    if ((slowest - mine) * 1000 <= options.windowMs) continue;
    const needed = m.remainingBytes / slowest + m.dirtyBytesPerSecond;
    const floor = Math.max(MIN_GROUP_SPEED, 2 * m.dirtyBytesPerSecond);
    speeds.set(m.vmId, Math.round(Math.min(options.maxBytesPerSecond, Math.max(floor, needed))));
  }
  return speeds;
}
