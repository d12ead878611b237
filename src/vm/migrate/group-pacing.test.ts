import { describe, expect, it } from 'vitest';
import type { PacedMember } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, paceGroup, secondsToConverge } from './group-pacing.ts';

const MiB = 2 ** 20;
const options = { maxBandwidthBytesPerSecond: 1024 * MiB, downtimeLimitMs: 300, windowMs: 150 };
const full = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: 300 };
// An idle member in its first pass: 200 MiB left, mostly zero pages (its remaining falls at 400 MiB/s while QEMU reports 100 MiB/s sent).
const idle: PacedMember = { vmId: 'idle', phase: 'memory', pass: 1, remainingBytes: 200 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 400 * MiB, braked: false, released: false };
// The same at the brink: 0.2 s from its switch-over at full speed.
const brink: PacedMember = { ...idle, remainingBytes: 30 * MiB + 0.2 * 400 * MiB };
// A member rewriting 64 MiB: past its first pass, 64 MiB left at 100 MiB/s sent and 40 MiB/s dirtied.
const busy: PacedMember = { vmId: 'busy', phase: 'memory', pass: 3, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 40 * MiB, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 0, braked: false, released: false };

describe('group pacing (brake at the brink, release when the others are held)', () => {
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

  it('runs a member at full speed until its brink, brakes it there while a slower one is on its way, and releases it when the others are held', () => {
    const slow = { ...busy, remainingBytes: 150 * MiB };
    // Far from its switch-over: full speed.
    expect(paceGroup([idle, slow], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // At the brink: a crawl with a 1 ms downtime limit; the slow one runs at full speed.
    const braking = paceGroup([brink, slow], options);
    expect(braking.get('busy')).toMatchObject({ settings: full, braked: false });
    expect(braking.get('idle')).toMatchObject({ settings: { maxBandwidthBytesPerSecond: BRAKE_FLOOR, downtimeLimitMs: BRAKE_DOWNTIME_MS }, braked: true });
    // A braked member that dirties memory crawls all the same (what it dirties goes after its release).
    expect(paceGroup([{ ...brink, dirtyBytesPerSecond: 2 * MiB, remainingBytes: 30 * MiB }, slow], options).get('idle')?.settings.maxBandwidthBytesPerSecond).toBe(BRAKE_FLOOR);
    // Braked, it stays braked while the slow one is on its way, even once the estimate says it is close.
    expect(paceGroup([{ ...brink, braked: true }, { ...busy, remainingBytes: 31 * MiB }], options).get('idle')?.braked).toBe(true);
    // The slow one is held: released.
    expect(paceGroup([{ ...brink, braked: true }, { ...slow, phase: 'held' }], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // Once released, never braked again.
    expect(paceGroup([{ ...brink, released: true }, slow], options).get('idle')?.braked).toBe(false);
  });

  it('brakes nobody while a member mirrors disks, is not measured yet, or when the others are as close', () => {
    const slow = { ...busy, remainingBytes: 150 * MiB };
    expect(paceGroup([brink, { ...slow, phase: 'disks' }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([brink, { ...slow, bandwidthBytesPerSecond: 0 }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([brink, { ...brink, vmId: 'other' }], options).get('idle')?.braked).toBe(false);
    // Only a braked member is left on its way: it is not braked for itself.
    expect(paceGroup([{ ...brink, braked: true }, { ...brink, vmId: 'other', braked: true }], options).get('idle')?.braked).toBe(false);
  });
});
