import { describe, expect, it } from 'vitest';
import { MIN_GROUP_SPEED, paceGroup } from './group-pacing.ts';

const MiB = 2 ** 20;
const max = 1024 * MiB;

describe('group pacing', () => {
  it('slows the member that would converge long before the slowest, never below twice its dirty rate', () => {
    const speeds = paceGroup(
      [
        { vmId: 'small', phase: 'memory', remainingBytes: 64 * MiB, dirtyBytesPerSecond: 10 * MiB, bandwidthBytesPerSecond: 100 * MiB },
        { vmId: 'big', phase: 'memory', remainingBytes: 900 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB },
      ],
      { maxBytesPerSecond: max, windowMs: 1_000 },
    );
    expect(speeds.get('big')).toBe(max);
    // 9 s for the big one: the small one needs 64/9 + 10 MiB/s, and at least 20 MiB/s.
    expect(speeds.get('small')).toBe(Math.round(20 * MiB));
  });

  it('leaves everyone at the cap when the members are within the window, one still mirrors disks, or one does not converge', () => {
    const a = { vmId: 'a', phase: 'memory', remainingBytes: 100 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB };
    const b = { ...a, vmId: 'b', remainingBytes: 150 * MiB };
    expect([...paceGroup([a, b], { maxBytesPerSecond: max, windowMs: 1_000 }).values()]).toEqual([max, max]);
    expect([...paceGroup([{ ...a, remainingBytes: 1 * MiB }, { ...b, phase: 'disks' }], { maxBytesPerSecond: max, windowMs: 100 }).values()]).toEqual([max]);
    const stuck = { ...b, remainingBytes: 900 * MiB, dirtyBytesPerSecond: 200 * MiB };
    expect(paceGroup([{ ...a, remainingBytes: 1 * MiB }, stuck], { maxBytesPerSecond: max, windowMs: 100 }).get('a')).toBe(max);
    expect(MIN_GROUP_SPEED).toBeGreaterThan(0);
  });
});
