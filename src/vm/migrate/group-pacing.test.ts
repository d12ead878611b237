import { describe, expect, it } from 'vitest';
import type { PacedMember } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, paceGroup, secondsToConverge } from './group-pacing.ts';

const MiB = 2 ** 20;
const options = { maxBandwidthBytesPerSecond: 1024 * MiB, downtimeLimitMs: 300, windowMs: 150 };
const full = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: 300 };
// An idle member in its first pass: 200 MiB left, mostly zero pages (its remaining falls at 400 MiB/s while QEMU reports 100 MiB/s sent).
const idle: PacedMember = { vmId: 'idle', phase: 'memory', pass: 1, remainingBytes: 200 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 400 * MiB, released: false };
// A member rewriting 64 MiB: past its first pass, 64 MiB left at 100 MiB/s sent and 40 MiB/s dirtied.
const busy: PacedMember = { vmId: 'busy', phase: 'memory', pass: 3, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 40 * MiB, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 0, released: false };

describe('group pacing (brake and release)', () => {
  it('estimates a first pass from the drain rate and later passes from what the downtime limit leaves', () => {
    // (200 - 30) MiB above what 300 ms at 100 MiB/s can stop with, at 400 MiB/s.
    expect(secondsToConverge(idle, 300)).toBeCloseTo(170 / 400);
    // (64 - 30) MiB above what 300 ms at 100 MiB/s can stop with, at 60 MiB/s net.
    expect(secondsToConverge(busy, 300)).toBeCloseTo(34 / 60);
    expect(secondsToConverge({ ...busy, dirtyBytesPerSecond: 120 * MiB }, 300)).toBe(Number.POSITIVE_INFINITY);
    expect(secondsToConverge({ ...busy, phase: 'held' }, 300)).toBe(0);
    // In its first pass a member that dirties memory also needs the passes over what it dirties meanwhile (a second's worth at least).
    const first = { ...idle, dirtyBytesPerSecond: 40 * MiB };
    expect(secondsToConverge(first, 300)).toBeCloseTo(170 / 400 + (40 - 30) / 60);
  });

  it('brakes the member that would reach its switch-over well before the slowest, with a low downtime limit, and releases it once the slowest is within the window', () => {
    const slow = { ...busy, remainingBytes: 150 * MiB };
    const braking = paceGroup([idle, slow], options);
    expect(braking.get('busy')).toMatchObject({ settings: full, braked: false });
    expect(braking.get('idle')).toMatchObject({ settings: { maxBandwidthBytesPerSecond: BRAKE_FLOOR, downtimeLimitMs: BRAKE_DOWNTIME_MS }, braked: true });
    // A braked member that dirties memory crawls at twice its dirty rate.
    expect(paceGroup([{ ...idle, dirtyBytesPerSecond: 2 * MiB }, slow], options).get('idle')?.settings.maxBandwidthBytesPerSecond).toBe(4 * MiB);
    // The slowest now needs about what the idle one needs at full speed: released.
    const near = { ...busy, remainingBytes: 30 * MiB + (170 / 400) * 60 * MiB };
    expect(paceGroup([idle, near], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // Once released, never braked again.
    expect(paceGroup([{ ...idle, released: true }, slow], options).get('idle')?.braked).toBe(false);
  });

  it('brakes nobody while a member mirrors disks, is not measured yet, or does not converge', () => {
    const slow = { ...busy, remainingBytes: 150 * MiB };
    expect(paceGroup([idle, { ...slow, phase: 'disks' }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([idle, { ...slow, bandwidthBytesPerSecond: 0 }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([idle, { ...slow, dirtyBytesPerSecond: 200 * MiB }], options).get('idle')?.braked).toBe(false);
    // A held member is at its switch-over already: the others are not braked for it.
    expect(paceGroup([idle, { ...slow, phase: 'held' }], options).get('idle')?.braked).toBe(false);
  });
});
