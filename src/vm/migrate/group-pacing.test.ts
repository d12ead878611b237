import { describe, expect, it } from 'vitest';
import type { PacedMember } from './group-pacing.ts';
import { BRAKE_DOWNTIME_MS, BRAKE_FLOOR, BRINK_BYTES, LEAD_S, paceGroup, secondsToConverge } from './group-pacing.ts';

const MiB = 2 ** 20;
const options = { maxBandwidthBytesPerSecond: 1024 * MiB, downtimeLimitMs: 300, windowMs: 150 };
const full = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: 300 };
const crawl = { maxBandwidthBytesPerSecond: BRAKE_FLOOR, downtimeLimitMs: BRAKE_DOWNTIME_MS };
const hover = { maxBandwidthBytesPerSecond: options.maxBandwidthBytesPerSecond, downtimeLimitMs: BRAKE_DOWNTIME_MS };
// An idle member in its first pass: 200 MiB left, mostly zero pages (its remaining falls at 400 MiB/s while QEMU reports 100 MiB/s sent).
const idle: PacedMember = { vmId: 'idle', phase: 'memory', pass: 1, remainingBytes: 200 * MiB, dirtyBytesPerSecond: 0, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 400 * MiB, started: true, braked: false, released: false, landed: false, sinceReportS: 0 };
// The same at the brink: 0.2 s from its switch-over at full speed (above BRINK_BYTES: at the brink by its estimate).
const brink: PacedMember = { ...idle, remainingBytes: 30 * MiB + 0.2 * 400 * MiB };
// A member rewriting 64 MiB: past its first pass, 64 MiB left at 100 MiB/s sent and 40 MiB/s dirtied, hovering.
const busy: PacedMember = { vmId: 'busy', phase: 'memory', pass: 3, remainingBytes: 64 * MiB, dirtyBytesPerSecond: 40 * MiB, bandwidthBytesPerSecond: 100 * MiB, drainBytesPerSecond: 0, started: true, braked: false, released: false, landed: false, sinceReportS: 0 };
// The same still in its first pass (150 MiB left at 100 MiB/s).
const busyFirst: PacedMember = { ...busy, pass: 1, remainingBytes: 150 * MiB, drainBytesPerSecond: 100 * MiB };
// Both waiting braked at the start of their pre-copy, not measured at full speed yet (the busy one's dirty rate sampled).
const idleWaiting: PacedMember = { ...idle, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };
const busyWaiting: PacedMember = { ...busy, pass: 1, dirtyBytesPerSecond: 100 * MiB, remainingBytes: 256 * MiB, bandwidthBytesPerSecond: 0, drainBytesPerSecond: 0, started: false, braked: true };

describe('group pacing (a gated start; the busy member hovers; light ones braked at the brink, released together; the busy one lands last)', () => {
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

  it('keeps a member whose guest dirties memory hovering while the others are on their way, and lands it timed with the light ones', () => {
    // A light member on its way, far from its brink: the busy one hovers.
    expect(paceGroup([idle, busy], options).get('busy')).toMatchObject({ settings: hover, hovering: true });
    // Its dirty rate fell (auto-converge's throttle): it hovers on.
    expect(paceGroup([idle, { ...busy, dirtyBytesPerSecond: 0 }], options).get('busy')?.hovering).toBe(true);
    // Everyone ready: the light one braked at its brink needs 1.1 s for the rest of its pass (110 MiB at the 100 MiB/s
    // QEMU sends), the busy one 0.57 s at the group's limit ((64 - 30) MiB at 60 MiB/s net): the light one goes first.
    const braked = { ...brink, braked: true };
    const first = paceGroup([braked, busy], options);
    expect(first.get('idle')).toMatchObject({ settings: full, braked: false });
    expect(first.get('busy')).toMatchObject({ settings: hover, hovering: true });
    // Released, the light one still needs more than the busy one plus the lead: the busy one hovers on...
    const released = { ...brink, released: true };
    expect(paceGroup([released, busy], options).get('busy')?.hovering).toBe(true);
    // ... until it needs no more than that (its figures less the time since its report).
    expect(paceGroup([{ ...released, sinceReportS: 0.5 }, busy], options).get('busy')).toMatchObject({ settings: full, hovering: false, braked: false });
    expect(paceGroup([{ ...released, remainingBytes: 60 * MiB }, busy], options).get('busy')?.hovering).toBe(false);
    // The busy one needs longer than the light one (170 MiB at 60 MiB/s net): it lands first, the light one stays braked.
    const longer = paceGroup([braked, { ...busy, remainingBytes: 200 * MiB }], options);
    expect(longer.get('busy')).toMatchObject({ settings: full, hovering: false });
    expect(longer.get('idle')).toMatchObject({ settings: crawl, braked: true });
    // A light one at its brink, not braked (nobody was on its way), whose turn has not come: braked until it comes.
    expect(paceGroup([{ ...idle, remainingBytes: 20 * MiB }, { ...busy, remainingBytes: 200 * MiB }], options).get('idle')).toMatchObject({ settings: crawl, braked: true });
    // The light one held: the busy one lands.
    expect(paceGroup([{ ...idle, phase: 'held' }, busy], options).get('busy')).toMatchObject({ settings: full, hovering: false });
    // It does not converge by the estimate (it dirties faster than it sends: auto-converge must throttle it): everyone goes.
    const fast = paceGroup([braked, { ...busy, dirtyBytesPerSecond: 120 * MiB }], options);
    expect([fast.get('busy')?.hovering, fast.get('idle')?.braked]).toEqual([false, false]);
    // Two busy members: both land once both are past their first pass.
    expect(paceGroup([busy, { ...busyFirst, vmId: 'other' }], options).get('busy')?.hovering).toBe(true);
    expect(paceGroup([busy, { ...busy, vmId: 'other' }], options).get('busy')?.hovering).toBe(false);
    // Once landed, it never hovers again.
    expect(paceGroup([idle, { ...busy, landed: true }], options).get('busy')).toMatchObject({ settings: full, hovering: false });
    // A light member on its way runs with the 1 ms limit too (nothing changes in its first pass; after it, it hovers if its
    // guest dirties anything), and a light one past its first pass hovers like a busy one.
    expect(paceGroup([idle, busyFirst], options).get('idle')).toMatchObject({ settings: hover, hovering: true });
    expect(paceGroup([{ ...idle, pass: 2, remainingBytes: 2 * MiB }, busyFirst], options).get('idle')).toMatchObject({ settings: hover, braked: false });
  });

  it('brakes a light member at the brink of its first pass while another is on its way, and releases it when every other one is ready', () => {
    // Far from its brink: full bandwidth (with the 1 ms limit).
    expect(paceGroup([idle, busyFirst], options).get('idle')).toMatchObject({ settings: hover, braked: false });
    // At the brink while the busy one is still in its first pass: a crawl with a 1 ms downtime limit.
    expect(paceGroup([brink, busyFirst], options).get('idle')).toMatchObject({ settings: crawl, braked: true, started: true });
    // At the brink by its remaining memory alone (a mostly-zero tail drains faster than any rate seen before it).
    expect(paceGroup([{ ...idle, remainingBytes: BRINK_BYTES, drainBytesPerSecond: 10 * MiB }, busyFirst], options).get('idle')?.braked).toBe(true);
    // At the brink by its estimate less the time since its last report.
    expect(paceGroup([{ ...idle, sinceReportS: 0.3 }, busyFirst], options).get('idle')?.braked).toBe(true);
    // Past its first pass it is not braked (a crawl would not hold an idle guest there).
    expect(paceGroup([{ ...brink, pass: 2, remainingBytes: 31 * MiB }, busyFirst], options).get('idle')?.braked).toBe(false);
    // The busy one hovering past its first pass is ready: a light one at its brink runs on, and a braked one is released.
    expect(paceGroup([brink, busy], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([{ ...brink, braked: true }, busy], options).get('idle')).toMatchObject({ settings: full, braked: false });
    // Braked, it stays braked while another light one is on its way, far from its brink...
    const other = { ...idle, vmId: 'other', remainingBytes: 250 * MiB };
    expect(paceGroup([{ ...brink, braked: true }, other, busy], options).get('idle')?.braked).toBe(true);
    // ... and is released when that one is at its brink (it runs on: the two arrive together), braked, or held.
    expect(paceGroup([{ ...brink, braked: true }, { ...other, remainingBytes: brink.remainingBytes }, busy], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([{ ...brink, braked: true }, { ...other, braked: true, remainingBytes: brink.remainingBytes }, busy], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([{ ...brink, braked: true }, { ...other, phase: 'held' }, busy], options).get('idle')?.braked).toBe(false);
    // Once released, never braked again.
    expect(paceGroup([{ ...brink, released: true }, busyFirst], options).get('idle')?.braked).toBe(false);
  });

  it('brakes nobody when the others are as close, and a group of one runs at full speed', () => {
    expect(paceGroup([brink, { ...brink, vmId: 'other' }], options).get('idle')?.braked).toBe(false);
    // Only braked members are left on their way: all are released.
    expect(paceGroup([{ ...brink, braked: true }, { ...brink, vmId: 'other', braked: true }], options).get('idle')?.braked).toBe(false);
    expect(paceGroup([idleWaiting], options).get('idle')).toMatchObject({ settings: full, started: true });
    expect(paceGroup([busyWaiting], options).get('busy')).toMatchObject({ settings: full, started: true, hovering: false });
  });
});
