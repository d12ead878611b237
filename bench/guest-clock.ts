// Downtime as the guest sees it, for the migrate and group benchmarks: a loop on
// the guest's vCPU reads the guest's monotonic clock (/proc/uptime, 10 ms
// steps) into a tmpfs file as fast as it can (about every millisecond under
// TCG); the longest step between two readings is the longest the guest saw
// itself not running (measured here: the guest's clock goes on across the
// stop, so the stop shows as a step). readGuestClock/clockLoss compare the
// guest's uptime with the host's clock around a migration; under load their
// jitter (a qga exec each) is larger than a downtime, so the bench prints the
// loop's gap only (stopTicks also places each long step on the host's clock,
// to find it on a migration's timeline).
export type GuestShell = (script: string) => Promise<string>;

/**
 * Starts the loop: it reads the clock as fast as it can, or every `sleepS` seconds (the group benchmark's many
 * guests on two cores: a loop each that never sleeps would hold the machine), into a tmpfs of `tmpfsMiB`.
 */
export function tickStart(options: { sleepS?: number; tmpfsMiB?: number } = {}): string {
  const pause = options.sleepS ? ` sleep ${options.sleepS};` : '';
  return `mkdir -p /mnt/tick && (grep -q " /mnt/tick " /proc/mounts || mount -t tmpfs -o size=${options.tmpfsMiB ?? 64}m tmpfs /mnt/tick) && rm -f /mnt/tick/log && ((while read u r < /proc/uptime; do echo $u;${pause} done > /mnt/tick/log) >/dev/null 2>&1 & echo $! > /mnt/tick/pid)`;
}

export const TICK_START = tickStart();
/** Stops the loop and prints its longest step in ms. */
export const TICK_STOP = "kill $(cat /mnt/tick/pid) 2>/dev/null; awk 'NR > 1 { g = ($1 - p) * 1000; if (g > m) m = g } { p = $1 } END { printf \"%d\\n\", m }' /mnt/tick/log; rm -f /mnt/tick/log";
/** Stops the loop and prints each step over 30 ms and how long before the loop's last reading it ended ("ms s" lines). */
export const TICK_STOP_GAPS = "kill $(cat /mnt/tick/pid) 2>/dev/null; awk '{ t[NR] = $1 } END { for (i = 2; i <= NR; i++) { g = (t[i] - t[i-1]) * 1000; if (g > 30) printf \"%d %.3f\\n\", g + 0.5, t[NR] - t[i] } }' /mnt/tick/log; rm -f /mnt/tick/log";

/** Stops the loop and prints its longest step in ms, then each step over 30 ms as TICK_STOP_GAPS does. */
export const TICK_STOP_WITH_GAPS = "kill $(cat /mnt/tick/pid) 2>/dev/null; awk '{ t[NR] = $1 } END { m = 0; for (i = 2; i <= NR; i++) { g = (t[i] - t[i-1]) * 1000; if (g > m) m = g } printf \"%d\\n\", m; for (i = 2; i <= NR; i++) { g = (t[i] - t[i-1]) * 1000; if (g > 30) printf \"%d %.3f\\n\", g + 0.5, t[NR] - t[i] } }' /mnt/tick/log; rm -f /mnt/tick/log";

/**
 * Stops the loop: its longest step (ms), and each step over 30 ms with the host's time (ms since the epoch)
 * at which it ended, taken as the loop's last reading being now (within a guest-agent round trip): to place
 * the guest's stalls on a migration's timeline.
 */
export async function stopTicks(shell: GuestShell): Promise<{ longestMs: number; gaps: Array<{ ms: number; endedAt: number }> }> {
  const now = Date.now();
  const [first, ...lines] = (await shell(TICK_STOP_WITH_GAPS)).trim().split('\n');
  const gaps = lines.filter((l) => l.trim()).map((l) => {
    const [ms, before] = l.trim().split(' ');
    return { ms: Number(ms), endedAt: now - Number(before) * 1000 };
  });
  return { longestMs: Number(first), gaps };
}

/** The `top` longest gaps, in time order, as "<ms> ms ended hh:mm:ss.mmm" for a log line. */
export function describeGaps(gaps: Array<{ ms: number; endedAt: number }>, top = 4): string {
  const longest = [...gaps].sort((a, b) => b.ms - a.ms).slice(0, top).sort((a, b) => a.endedAt - b.endedAt);
  return longest.map((g) => `${g.ms} ms ended ${new Date(g.endedAt).toISOString().slice(11, 23)}`).join(', ');
}

export interface ClockReading {
  guestMs: number;
  hostMs: number;
}

/** The guest's uptime, and the host's clock at the middle of the read. */
export async function readGuestClock(shell: GuestShell): Promise<ClockReading> {
  const t0 = performance.now();
  const out = await shell('cut -d" " -f1 /proc/uptime');
  const t1 = performance.now();
  return { guestMs: Number(out.trim()) * 1000, hostMs: (t0 + t1) / 2 };
}

/** How much longer the host's clock ran than the guest's between two readings (ms). */
export function clockLoss(before: ClockReading, after: ClockReading): number {
  return after.hostMs - before.hostMs - (after.guestMs - before.guestMs);
}
