import { describe, expect, it } from 'vitest';
import type { PacedMember } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, LEAD_S, paceGroup, secondsToConverge } from './group-pacing.ts';

const MiB = 2 ** 20;
const options = { maxBandwidthBytesPerSecond: 1024 * MiB, downtimeLimitMs: 300, windowMs: 150 };
const full = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: 300 };
const crawl = { maxBandwidthBytesPerSecond: BRAKE_FLOOR, downtimeLimitMs: BRAKE_DOWNTIME_MS };
// An idle member in its first pass: 200 MiB left, mostly zero pages (its remaining falls at 400 MiB/s while QEMU reports 100 MiB/s sent).
const idle: PacedMember = { vmId: 'idle', phase: 'memory', pass: 1, remainingBytes: 200 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 400 * MiB, started: true, braked: false, released: false };
// The same at the brink: 0.2 s from its switch-over at full speed.
const brink: PacedMember = { ...idle, remainingBytes: 30 * MiB + 0.2 * 400 * MiB };
// A member rewriting 64 MiB: past its first pass, 64 MiB left at 100 MiB/s sent and 40 MiB/s dirtied.
const busy: PacedMember = { vmId: 'busy', phase: 'memory', pass: 3, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 40 * MiB, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 0, started: true, braked: false, released: false };
// Both waiting braked at the start of their pre-copy, not measured at full speed yet (the busy one's dirty rate sampled).
const idleWaiting: PacedMember = { ...idle, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };
const busyWaiting: PacedMember = { ...busy, pass: 1, dirtyBytesPerSecond: 100 * MiB, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };

describe('group pacing (a gated, delayed start; brake at the brink; release when the others are held)', () => {
  it('estimates a first pass from the drain rate (plus the passes over what its guest dirties) and later passes from what the downtime limit leaves', () => {
    // (200 - 30) MiB above what 300 ms at 100 MiB/s can stop with, at 400 MiB/s.
    expect(secondsToConverge(idle, 300)).toBeCloseTo(170 / 400);
    // (64 - 30) MiB at 60 MiB/s net.
    expect(secondsToConverge(busy, 300)).toBeCloseTo(34 / 60);
    expect(secondsToConverge({ ...busy, dirtyBytesPerSecond: 120 * MiB }, 300)).toBe(Number.POSITIVE_INFINITY);
    expect(secondsToConverge({ ...busy, phase: 'held' }, 300)).toBe(0);
    // In its first pass a member that dirties memory also needs the passes over what it dirties meanwhile (a second's worth at least).
    expect(secondsToConverge({ ...idle, dirtyBytesPerSecond: 40 * MiB }, 300)).toBeCloseTo(170 / 400 + (40 - 30) / 60);
  });

  it('starts nobody until every member is in its pre-copy, then the longest first, and a light one when the slowest needs no more than it', () => {
    // One member still mirrors its disks (or is still being prepared): both wait at a crawl.
    for (const phase of ['disks', 'preparing']) {
      const gated = paceGroup([idleWaiting, { ...busyWaiting, phase }], options);
      expect(gated.get('idle')).toMatchObject({ settings: crawl, braked: true, started: false });
    }
    // Both in pre-copy: the busy one (it needs the passes over what it dirties) starts; the idle one waits.
    const opened = paceGroup([idleWaiting, busyWaiting], options);
    expect(opened.get('busy')).toMatchObject({ settings: full, braked: false, started: true });
    expect(opened.get('idle')).toMatchObject({ settings: crawl, braked: true, started: false });
    // All alike: all start together.
    expect(paceGroup([idleWaiting, { ...idleWaiting, vmId: 'other' }], options).get('other')).toMatchObject({ settings: full, started: true });
    // The busy one runs, measured, far from its switch-over: the idle one (estimated at the group's drain rate) still waits.
    const far = { ...busy, remainingBytes: 400 * MiB, drainBytesPerSecond: 400 * MiB };
    expect(paceGroup([idleWaiting, far], options).get('idle')).toMatchObject({ braked: true, started: false });
    // Once the busy one needs no more than the idle one's whole pre-copy (plus the lead): the idle one starts.
    const idleEta = secondsToConverge({ ...idleWaiting, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 400 * MiB }, 300);
    const close = { ...far, remainingBytes: 30 * MiB + (idleEta + LEAD_S / 2) * 60 * MiB };
    expect(paceGroup([idleWaiting, close], options).get('idle')).toMatchObject({ settings: full, braked: false, started: true });
    // Nobody on its way any more (the busy one is held): every waiting member starts.
    expect(paceGroup([idleWaiting, { ...far, phase: 'held' }], options).get('idle')?.started).toBe(true);
  });

  it('brakes a member at the brink of its first pass while a slower one is on its way, and releases it when the others are held', () => {
    const slow = { ...busy, remainingBytes: 150 * MiB };
    // Far from its switch-over: full speed.
    expect(paceGroup([idle, slow], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // At the brink: a crawl with a 1 ms downtime limit; the slow one runs at full speed.
    const braking = paceGroup([brink, slow], options);
    expect(braking.get('busy')).toMatchObject({ settings: full, braked: false });
    expect(braking.get('idle')).toMatchObject({ settings: crawl, braked: true, started: true });
    // Past its first pass it is not braked (a crawl would not hold an idle guest there).
    expect(paceGroup([{ ...brink, pass: 2, remainingBytes: 31 * MiB }, slow], options).get('idle')?.braked).toBe(false);
    // A braked member that dirties memory crawls all the same (what it dirties goes after its release).
    expect(paceGroup([{ ...brink, dirtyBytesPerSecond: 2 * MiB, remainingBytes: 30 * MiB }, slow], options).get('idle')?.settings.maxBandwidthBytesPerSecond).toBe(BRAKE_FLOOR);
    // Braked, it stays braked while the slowest needs more than it plus the lead.
    expect(paceGroup([{ ...brink, braked: true }, slow], options).get('idle')?.braked).toBe(true);
    // Even when the slowest's estimate says it is as close: its estimate is optimistic under load.
    const own = secondsToConverge(brink, 300);
    expect(paceGroup([{ ...brink, braked: true }, { ...busy, remainingBytes: 30 * MiB + (own + LEAD_S / 2) * 60 * MiB }], options).get('idle')?.braked).toBe(true);
    // The slow one is held: released.
    expect(paceGroup([{ ...brink, braked: true }, { ...slow, phase: 'held' }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // Once released, never braked again.
    expect(paceGroup([{ ...brink, released: true }, slow], options).get('idle')?.braked).toBe(false);
  });

  it('brakes nobody when the others are as close, and a group of one runs at full speed', () => {
    expect(paceGroup([brink, { ...brink, vmId: 'other' }], options).get('idle')?.braked).toBe(false);
    // Only braked members are left on their way: all are released.
    expect(paceGroup([{ ...brink, braked: true }, { ...brink, vmId: 'other', braked: true }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([idleWaiting], options).get('idle')).toMatchObject({ settings: full, started: true });
  });
});
