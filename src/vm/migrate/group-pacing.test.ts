import { describe, expect, it } from 'vitest';
import type { PacedMember } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, BRINK_BYTES, CROSS_BANDWIDTH, LAND_AFTER_S, LAND_DOWNTIME_MS, LEAD_S, RIPE_FACTOR, SLOW_BANDWIDTH, SLOW_TAIL_BYTES, arrivedAlone, paceGroup, ripe, ripeBytes, secondsToConverge } from './group-pacing.ts';

const MiB = 2 ** 20;
const options = { maxBandwidthBytesPerSecond: 1024 * MiB, downtimeLimitMs: 300, windowMs: 150 };
const full = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: 300 };
const crawl = { maxBandwidthBytesPerSecond: BRAKE_FLOOR, downtimeLimitMs: BRAKE_DOWNTIME_MS };
const hover = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: BRAKE_DOWNTIME_MS };
// A ripe hovering member landed: it switches over at its next sync.
const land = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: LAND_DOWNTIME_MS };
// A light member at the brink of the end of its first pass crosses its tail at CROSS_BANDWIDTH, its last SLOW_TAIL_BYTES slowly.
const crossing = { maxBandwidthBytesPerSecond: CROSS_BANDWIDTH, downtimeLimitMs: BRAKE_DOWNTIME_MS };
const slowed = { maxBandwidthBytesPerSecond: SLOW_BANDWIDTH, downtimeLimitMs: BRAKE_DOWNTIME_MS };
// An idle member in its first pass: 200 MiB left, mostly zero pages (its remaining falls at 400 MiB/s while QEMU reports 100 MiB/s sent).
const idle: PacedMember = { vmId: 'idle', phase: 'memory', pass: 1, remainingBytes: 200 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB, peakBandwidthBytesPerSecond: 100 * MiB, lastRunS: 0, drainBytesPerSecond: 400 * MiB, passBytes: 0, previousPassBytes: 0, secondPassBytes: 0, started: true, braked: false, released: false, landed: false, sinceReportS: 0, parked: false, hoverPass: 0, selfParked: false };
// The same at the brink: 0.2 s from its switch-over at full speed (above BRINK_BYTES: at the brink by its estimate).
const brink: PacedMember = { ...idle, remainingBytes: 30 * MiB + 0.2 * 400 * MiB };
// A member rewriting 64 MiB: past its first pass (its second pass began with 64 MiB), 64 MiB left at 100 MiB/s sent and
// 40 MiB/s dirtied, hovering; its passes (64 MiB) do not fit what 300 ms at 100 MiB/s let it stop with (30 MiB): not ripe.
const busy: PacedMember = { vmId: 'busy', phase: 'memory', pass: 3, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 40 * MiB, bandwidthBytesPerSecond: 100 * MiB, peakBandwidthBytesPerSecond: 100 * MiB, lastRunS: 0, drainBytesPerSecond: 0, passBytes: 64 * MiB, previousPassBytes: 64 * MiB, secondPassBytes: 64 * MiB, started: true, braked: false, released: false, landed: false, sinceReportS: 0, parked: false, hoverPass: 0, selfParked: false };
// The same throttled: its last two passes fit RIPE_FACTOR times what 300 ms at 100 MiB/s let it stop with (ripe).
const ripeBusy: PacedMember = { ...busy, remainingBytes: 10 * MiB, passBytes: 20 * RIPE_FACTOR * MiB, previousPassBytes: 28 * RIPE_FACTOR * MiB };
// The same still in its first pass (150 MiB left at 100 MiB/s).
const busyFirst: PacedMember = { ...busy, pass: 1, remainingBytes: 150 * MiB, drainBytesPerSecond: 100 * MiB, passBytes: 0, previousPassBytes: 0, secondPassBytes: 0 };
// Both waiting braked at the start of their pre-copy, not measured at full speed yet (the busy one's dirty rate sampled).
const idleWaiting: PacedMember = { ...idle, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };
const busyWaiting: PacedMember = { ...busyFirst, dirtyBytesPerSecond: 100 * MiB, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };
// A light member braked past its first pass: 1 MiB left, its guest dirtied 2 MiB during its pass before.
const past: PacedMember = { ...idle, pass: 2, remainingBytes: MiB, passBytes: 2 * MiB, secondPassBytes: 2 * MiB, braked: true };

describe('group pacing (a gated start; light ones slowed at the brink of their first pass and braked past it; busy ones hover until ripe, parked while others are in their first pass; timed last runs)', () => {
  it('sends back a member held before its last run while another has not reached the end of its first pass', () => {
    const heldAlone = { released: false, landed: false };
    // Another still in its first pass, not started yet, or its disks still mirroring: it would wait held for all of that.
    const limit = options.downtimeLimitMs;
    expect(arrivedAlone(heldAlone, [past, idle], limit)).toBe(true);
    expect(arrivedAlone(heldAlone, [idleWaiting], limit)).toBe(true);
    expect(arrivedAlone(heldAlone, [{ ...idleWaiting, phase: 'disks', started: true }], limit)).toBe(true);
    expect(arrivedAlone(heldAlone, [{ ...idleWaiting, phase: 'preparing' }], limit)).toBe(true);
    // A busy one hovering, not ripe yet: its last run may be seconds away.
    expect(arrivedAlone(heldAlone, [past, busy], limit)).toBe(true);
    expect(arrivedAlone(heldAlone, [past, { ...ripeBusy, parked: true }], limit)).toBe(true);
    // Every other one past its first pass (braked, or hovering ripe, or landed) or held: the last runs come next, it stays held.
    expect(arrivedAlone(heldAlone, [past, ripeBusy, { ...idle, phase: 'held' }], limit)).toBe(false);
    expect(arrivedAlone(heldAlone, [past, { ...busy, landed: true }], limit)).toBe(false);
    expect(arrivedAlone(heldAlone, [past, { ...busy, selfParked: true }], limit)).toBe(false);
    // On its last run (released or landed) it arrived as the pacer meant it to.
    expect(arrivedAlone({ released: true, landed: false }, [idle], limit)).toBe(false);
    expect(arrivedAlone({ released: false, landed: true }, [idle], limit)).toBe(false);
    // Alone in its group.
    expect(arrivedAlone(heldAlone, [], limit)).toBe(false);
  });

  it('estimates a first pass from the drain rate (plus the passes over what its guest dirties), later passes from what the downtime limit leaves', () => {
    // (200 - 30) MiB above what 300 ms at 100 MiB/s can stop with, at 400 MiB/s.
    expect(secondsToConverge(idle, 300)).toBeCloseTo(170 / 400);
    // (64 - 30) MiB at 60 MiB/s net.
    expect(secondsToConverge(busy, 300)).toBeCloseTo(34 / 60);
    expect(secondsToConverge({ ...busy, dirtyBytesPerSecond: 120 * MiB }, 300)).toBe(Number.POSITIVE_INFINITY);
    expect(secondsToConverge({ ...busy, phase: 'held' }, 300)).toBe(0);
    // In its first pass a member that dirties memory also needs the passes over what it dirties meanwhile (a second's worth at least).
    expect(secondsToConverge({ ...idle, dirtyBytesPerSecond: 40 * MiB }, 300)).toBeCloseTo(170 / 400 + (40 - 30) / 60);
  });

  it('judges a hovering member ripe when its last two passes fit RIPE_FACTOR times what the downtime limit lets it stop with at full speed', () => {
    expect(ripe(busy, 300, 100 * MiB)).toBe(false);
    expect(ripe(ripeBusy, 300, 100 * MiB)).toBe(true);
    // One pass that fits is not enough (its passes vary: the next may not).
    expect(ripe({ ...ripeBusy, previousPassBytes: 40 * RIPE_FACTOR * MiB }, 300, 100 * MiB)).toBe(false);
    // At a lower full-speed bandwidth the same passes do not fit (the one QEMU reports while it hovers does not count);
    // not measured yet: the group's bandwidth.
    expect(ripe({ ...ripeBusy, peakBandwidthBytesPerSecond: 50 * MiB }, 300, 100 * MiB)).toBe(false);
    expect(ripe({ ...ripeBusy, peakBandwidthBytesPerSecond: 100 * MiB }, 300, 100 * MiB)).toBe(true);
    expect(ripe({ ...ripeBusy, peakBandwidthBytesPerSecond: 0 }, 300, 100 * MiB)).toBe(true);
    expect(ripe({ ...busy, phase: 'held' }, 300, 100 * MiB)).toBe(true);
  });

  it('starts nobody until every member is in its pre-copy, then the longest first, and a light one when the slowest needs no more than it', () => {
    // One member still mirrors its disks (or is still being prepared): both wait at a crawl.
    for (const phase of ['disks', 'preparing']) {
      const gated = paceGroup([idleWaiting, { ...busyWaiting, phase }], options);
      expect(gated.get('idle')).toMatchObject({ settings: crawl, braked: true, started: false });
    }
    // Both in pre-copy: the busy one starts first, hovering (full bandwidth, 1 ms downtime limit: the end of its whole first
    // pass is what the others wait for); the idle one (its switch-over comes when what is left fits its downtime limit) waits.
    const opened = paceGroup([idleWaiting, busyWaiting], options);
    expect(opened.get('busy')).toMatchObject({ settings: hover, braked: false, started: true, hovering: true });
    expect(opened.get('idle')).toMatchObject({ settings: crawl, braked: true, started: false, hovering: false });
    // All alike: all start together (a started member runs with a 1 ms downtime limit until its last run).
    expect(paceGroup([idleWaiting, { ...idleWaiting, vmId: 'other' }], options).get('other')).toMatchObject({ settings: hover, started: true });
    // The busy one runs, measured, far from the end of its first pass: the idle one (estimated at the group's drain rate) still waits.
    const far = { ...busyFirst, remainingBytes: 900 * MiB };
    expect(paceGroup([idleWaiting, far], options).get('idle')).toMatchObject({ braked: true, started: false });
    // Once the busy one needs no more than the idle one's whole first pass (plus the lead): the idle one starts.
    const idleEta = secondsToConverge({ ...idleWaiting, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 100 * MiB }, 300);
    const close = { ...far, remainingBytes: (idleEta + LEAD_S / 2) * 100 * MiB };
    expect(paceGroup([idleWaiting, close], options).get('idle')).toMatchObject({ settings: hover, braked: false, started: true });
    // The busy one is past its first pass (it can land at any time): every waiting member starts.
    expect(paceGroup([idleWaiting, busy], options).get('idle')?.started).toBe(true);
  });

  it('keeps a light member past its first pass braked at a crawl and a busy one hovering until it is ripe, then sends all on their last run', () => {
    // A light member on its way, far from its brink: the busy one (its guest dirtied 64 MiB during its first pass) waits
    // parked at a crawl past its first pass (see the parking test); once the light one is past its own, it hovers.
    expect(paceGroup([idle, busy], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false, parked: true });
    expect(paceGroup([past, busy], options).get('busy')).toMatchObject({ settings: hover, braked: false, hovering: true });
    // One that dirtied little during its first pass waits at a crawl (guest running: nothing is synced, nothing switches
    // over), whatever its sampled dirty rate said.
    expect(paceGroup([idle, { ...busy, secondPassBytes: MiB }], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false });
    // So does a light member past its first pass (at full bandwidth it would find nothing dirty soon and switch over).
    expect(paceGroup([{ ...idle, pass: 2, remainingBytes: 2 * MiB }, busyFirst], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    expect(paceGroup([{ ...idle, pass: 2, remainingBytes: 0 }, { ...idle, vmId: 'other' }], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    // Everyone ready (past the first pass), the busy one not ripe: nobody goes; it hovers, the light one waits at a crawl.
    const unripe = paceGroup([past, busy], options);
    expect(unripe.get('busy')).toMatchObject({ settings: hover, hovering: true });
    expect(unripe.get('idle')).toMatchObject({ settings: crawl, braked: true });
    // Ripe: the light one is released (the group's settings; its last run: what is left and what its guest dirtied while
    // braked, within the group's limit at once), the busy one hovers on...
    const go = paceGroup([past, ripeBusy], options);
    expect(go.get('idle')).toMatchObject({ settings: full, braked: false });
    expect(go.get('busy')).toMatchObject({ settings: hover, hovering: true });
    // ... and lands (LAND_DOWNTIME_MS: it switches over at its next sync) LAND_AFTER_S after that release.
    const released = { ...past, braked: false, released: true };
    expect(paceGroup([{ ...released, lastRunS: LAND_AFTER_S / 2 }, ripeBusy], options).get('busy')).toMatchObject({ settings: hover, hovering: true });
    expect(paceGroup([{ ...released, lastRunS: LAND_AFTER_S }, ripeBusy], options).get('busy')).toMatchObject({ settings: land, braked: false, hovering: false });
    // Landed, it keeps that limit.
    expect(paceGroup([{ ...released, lastRunS: 1 }, { ...ripeBusy, landed: true }], options).get('busy')).toMatchObject({ settings: land, braked: false });
    // A light member still at its brink (crossing, not past its first pass yet) keeps the others waiting: the ripe busy
    // one parked at a crawl (see the parking test).
    expect(paceGroup([{ ...brink, braked: true }, ripeBusy], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false, parked: true });
    // A busy member slowed at its brink (its sampled dirty rate said light) found busy past it: it hovers, not released
    // (parked while the other is in its first pass).
    expect(paceGroup([{ ...busy, braked: true }, { ...busyFirst, vmId: 'other' }], options).get('busy')).toMatchObject({ settings: crawl, braked: true, parked: true });
    expect(paceGroup([{ ...ripeBusy, braked: true }, past], options).get('busy')).toMatchObject({ settings: hover, braked: false, hovering: true });
    // One released before still needs more than the light one's last run plus the window: the light one waits on...
    const going = { ...busy, vmId: 'slow', secondPassBytes: MiB, released: true };
    expect(paceGroup([past, going], options).get('idle')?.braked).toBe(true);
    // ... until it needs no more than that (its figures less the time since its report).
    expect(paceGroup([past, { ...going, sinceReportS: 0.3 }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    expect(paceGroup([past, { ...going, remainingBytes: 40 * MiB }], options).get('idle')?.braked).toBe(false);
    // The busy one held: the light one goes.
    expect(paceGroup([past, { ...busy, phase: 'held' }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // A braked one whose last run has no end by the estimate (it dirties faster than it sends: auto-converge must throttle
    // it) goes first, and the other waits, guest running, until its estimate comes within the other's or it is held.
    const fast = paceGroup([past, { ...past, vmId: 'fast', passBytes: 64 * MiB, dirtyBytesPerSecond: 120 * MiB }], options);
    expect(fast.get('fast')).toMatchObject({ settings: full, braked: false });
    expect(fast.get('idle')).toMatchObject({ settings: crawl, braked: true });
    expect(paceGroup([past, { ...past, vmId: 'fast', braked: false, released: true, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 120 * MiB }], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    // Two busy members: both land once both are past their first pass and ripe.
    expect(paceGroup([ripeBusy, { ...busyFirst, vmId: 'other' }], options).get('busy')).toMatchObject({ settings: crawl, parked: true });
    expect(paceGroup([ripeBusy, { ...busy, vmId: 'other' }], options).get('busy')).toMatchObject({ settings: hover, hovering: true });
    expect(paceGroup([ripeBusy, { ...ripeBusy, vmId: 'other' }], options).get('busy')).toMatchObject({ settings: land, braked: false });
    // Once on its last run, it is never braked again.
    expect(paceGroup([idle, { ...busy, landed: true }], options).get('busy')).toMatchObject({ settings: land, braked: false });
    expect(paceGroup([idle, going], options).get('slow')).toMatchObject({ settings: full, braked: false });
    // A light member on its way in its first pass runs at full bandwidth with the 1 ms limit.
    expect(paceGroup([idle, busyFirst], options).get('idle')).toMatchObject({ settings: hover, hovering: true });
  });

  it('parks a busy member past its first pass at a crawl while another is in its first pass, and wants it ripe anew once it hovers again', () => {
    // Past its first pass while the light one's first pass goes on: parked, ripe or not (a crawl holds a busy guest:
    // what is left never runs out, no sync comes, so it cannot switch over alone and wait held; hovering until ripe,
    // its passes shrank from 35 to 0.6 MiB within 0.1 s and it switched over alone before the pacer saw it ripe).
    expect(paceGroup([idle, busy], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false, parked: true });
    expect(paceGroup([idle, ripeBusy], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false, parked: true });
    // Parked, it stays parked while anyone is in a first pass, whatever its (stale) passes say; so it is when a member
    // has not started yet.
    const parked = { ...ripeBusy, braked: true, parked: true };
    expect(paceGroup([idle, { ...parked, passBytes: 64 * MiB }], options).get('busy')).toMatchObject({ settings: crawl, parked: true });
    expect(paceGroup([{ ...idleWaiting, remainingBytes: 100 * MiB }, parked], options).get('busy')).toMatchObject({ settings: crawl, parked: true });
    // Everyone else past the first pass: it hovers again, and nobody is released in that same step.
    const back = paceGroup([past, parked], options);
    expect(back.get('busy')).toMatchObject({ settings: hover, braked: false, hovering: true, parked: false });
    expect(back.get('idle')).toMatchObject({ settings: crawl, braked: true });
    // Hovering again since pass 5: its passes before (small) do not count; at pass 6 the one before is what its guest
    // dirtied while parked; from pass 7 on two small passes make it ripe again, and the light one is released.
    const again = { ...ripeBusy, hoverPass: 5 };
    for (const pass of [5, 6]) {
      expect(ripe({ ...again, pass }, 300, 100 * MiB)).toBe(false);
      expect(paceGroup([past, { ...again, pass }], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    }
    expect(ripe({ ...again, pass: 7 }, 300, 100 * MiB)).toBe(true);
    expect(paceGroup([past, { ...again, pass: 7 }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // Hovering past its first pass, its source is asked to park itself at a pass that would make it ripe (ripeBytes),
    // from its next pass on; hovering again after it was parked, from two passes later (the first sends what its guest
    // dirtied while parked).
    expect(paceGroup([past, busy], options).get('busy')?.park).toEqual({ belowBytes: ripeBytes(busy, 300, 100 * MiB), fromPass: busy.pass + 1 });
    expect(ripeBytes(busy, 300, 100 * MiB)).toBe(Math.floor(RIPE_FACTOR * 100 * MiB * 0.3));
    expect(back.get('busy')?.park).toEqual({ belowBytes: ripeBytes(busy, 300, 100 * MiB), fromPass: parked.pass + 2 });
    expect(paceGroup([past, { ...busy, hoverPass: 3 }], options).get('busy')?.park?.fromPass).toBe(5);
    // Nobody else is asked to park: not a light member, not a parked or braked one, not one on its last run.
    expect(paceGroup([idle, busyFirst], options).get('idle')?.park).toBeNull();
    expect(paceGroup([idle, busy], options).get('busy')?.park).toBeNull();
    expect(paceGroup([past, busy], options).get('idle')?.park).toBeNull();
    expect(paceGroup([past, { ...ripeBusy, landed: true }], options).get('busy')?.park).toBeNull();
    // Its source parked it (ripe): it waits at a crawl while anyone else is not ripe or in a first pass...
    const selfParked = { ...ripeBusy, braked: true, selfParked: true, remainingBytes: 2 * MiB, passBytes: 4 * MiB, previousPassBytes: 30 * MiB };
    expect(ripe(selfParked, 300, 100 * MiB)).toBe(true);
    expect(paceGroup([idle, selfParked], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false });
    expect(paceGroup([past, selfParked, { ...busy, vmId: 'other' }], options).get('busy')).toMatchObject({ settings: crawl, braked: true, hovering: false });
    // ... then runs its last run landed, with the braked ones' release (not LAND_AFTER_S after it), and keeps that limit.
    const lastRun = paceGroup([past, selfParked], options);
    expect(lastRun.get('busy')).toMatchObject({ settings: land, braked: false, hovering: false });
    expect(lastRun.get('idle')).toMatchObject({ settings: full, braked: false });
    expect(paceGroup([{ ...past, braked: false, released: true }, { ...selfParked, braked: false, released: true }], options).get('busy')).toMatchObject({ settings: land, braked: false });
    // Landed, but its landing came to its source after it parked itself (decided on the pass before: ignored), so it
    // waits at a crawl: it goes on with its last run, the others held or not.
    const heldOne = { ...past, phase: 'held', braked: false, released: true };
    expect(paceGroup([heldOne, { ...selfParked, landed: true }], options).get('busy')).toMatchObject({ settings: land, braked: false, hovering: false });
    expect(paceGroup([{ ...past, released: true, braked: false }, { ...selfParked, landed: true }], options).get('busy')).toMatchObject({ settings: land, braked: false });
    // Released and braked again by its source: it goes on at the group's settings.
    expect(paceGroup([heldOne, { ...past, vmId: 'other', released: true }], options).get('other')).toMatchObject({ settings: full, braked: false });
    // One on its last run is never parked; nor one still in its first pass.
    expect(paceGroup([idle, { ...ripeBusy, landed: true }], options).get('busy')).toMatchObject({ settings: land, parked: false });
    expect(paceGroup([idle, busyFirst], options).get('busy')).toMatchObject({ parked: false });
  });

  it('slows a light member at the brink of the end of its first pass until it is past it, whoever else is on its way', () => {
    // Far from its brink: full bandwidth (with the 1 ms limit).
    expect(paceGroup([idle, busyFirst], options).get('idle')).toMatchObject({ settings: hover, braked: false });
    // At the brink: it crosses its tail at CROSS_BANDWIDTH with a 1 ms downtime limit (it crosses the end of its first pass
    // slowly and iterates on, guest running, until it is seen past it and braked to a crawl).
    expect(paceGroup([brink, busyFirst], options).get('idle')).toMatchObject({ settings: crossing, braked: true, started: true });
    expect(paceGroup([brink, busy], options).get('idle')).toMatchObject({ settings: crossing, braked: true });
    expect(paceGroup([brink, { ...brink, vmId: 'other' }], options).get('idle')).toMatchObject({ settings: crossing, braked: true });
    // Its last SLOW_TAIL_BYTES at SLOW_BANDWIDTH (its threshold under a page: it switches over only if a sync finds nothing dirty).
    expect(paceGroup([{ ...brink, braked: true, remainingBytes: SLOW_TAIL_BYTES }, busyFirst], options).get('idle')).toMatchObject({ settings: slowed, braked: true });
    // At the brink by its remaining memory alone (a mostly-zero tail drains faster than any rate seen before it).
    expect(paceGroup([{ ...idle, remainingBytes: BRINK_BYTES, drainBytesPerSecond: 10 * MiB }, busyFirst], options).get('idle')?.braked).toBe(true);
    // At the brink by its estimate less the time since its last report.
    expect(paceGroup([{ ...idle, sinceReportS: 0.3 }, busyFirst], options).get('idle')?.braked).toBe(true);
    // Past its first pass it waits at a crawl.
    expect(paceGroup([{ ...brink, pass: 2, remainingBytes: 31 * MiB }, busyFirst], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    // Once released, never braked again.
    expect(paceGroup([{ ...brink, released: true }, busyFirst], options).get('idle')?.braked).toBe(false);
  });

  it('sends members alike together, and a group of one runs at full speed', () => {
    expect(paceGroup([past, { ...past, vmId: 'other' }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    expect(paceGroup([idleWaiting], options).get('idle')).toMatchObject({ settings: full, started: true });
    expect(paceGroup([busyWaiting], options).get('busy')).toMatchObject({ settings: full, started: true, hovering: false });
  });
});
