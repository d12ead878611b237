import { describe, expect, it } from 'vitest';
import { ConvergenceWatch } from './convergence.ts';

const active = (passes: number, remainingBytes: number) => ({ passes, remainingBytes, status: 'active' });

describe('ConvergenceWatch', () => {
  it('keeps pre-copy while remaining memory falls', () => {
    const w = new ConvergenceWatch({ postcopy: 'auto', timeoutMs: 60_000 });
    for (const [pass, remaining] of [[1, 800], [2, 400], [3, 200], [4, 90]]) expect(w.observe(active(pass as number, remaining as number), 1000).action).toBe('continue');
  });

  it('switches to post-copy under auto when passes stop helping, once', () => {
    const w = new ConvergenceWatch({ postcopy: 'auto', timeoutMs: 60_000, stallPasses: 3 });
    expect(w.observe(active(1, 500), 100).action).toBe('continue');
    expect(w.observe(active(2, 490), 200).action).toBe('continue');
    expect(w.observe(active(3, 480), 300).action).toBe('continue');
    const d = w.observe(active(4, 485), 400);
    expect(d.action).toBe('start-postcopy');
    expect(w.observe(active(5, 485), 500).action).toBe('continue');
  });

  it('switches under auto when half the time budget is gone', () => {
    const w = new ConvergenceWatch({ postcopy: 'auto', timeoutMs: 10_000 });
    expect(w.observe(active(1, 500), 4_000).action).toBe('continue');
    expect(w.observe(active(1, 450), 5_100).action).toBe('start-postcopy');
  });

  it('never switches under never, and fails at the time budget', () => {
    const w = new ConvergenceWatch({ postcopy: 'never', timeoutMs: 10_000, stallPasses: 1 });
    for (let p = 1; p < 10; p++) expect(w.observe(active(p, 500), p * 1000).action).toBe('continue');
    expect(w.observe(active(11, 500), 10_001).action).toBe('fail');
  });

  it('switches after the first pass under always', () => {
    const w = new ConvergenceWatch({ postcopy: 'always', timeoutMs: 10_000 });
    expect(w.observe(active(0, 500), 10).action).toBe('continue');
    expect(w.observe(active(1, 500), 20).action).toBe('start-postcopy');
  });

  it('never switches a stalled stream to post-copy (a cut path): it fails at the time budget', () => {
    const w = new ConvergenceWatch({ postcopy: 'auto', timeoutMs: 10_000, stalledMs: 2_000 });
    expect(w.observe({ ...active(1, 500), transferredBytes: 100 }, 1_000).action).toBe('continue');
    expect(w.observe({ ...active(1, 450), transferredBytes: 150 }, 2_000).action).toBe('continue');
    // Nothing more sent from here on: past half the budget, and past the stall passes, still no post-copy.
    for (let ms = 2_500; ms <= 9_500; ms += 500) expect(w.observe({ ...active(1, 450), transferredBytes: 150 }, ms).action).toBe('continue');
    const end = w.observe({ ...active(1, 450), transferredBytes: 150 }, 10_001);
    expect(end.action).toBe('fail');
    expect(end.action === 'fail' && end.reason).toMatch(/nothing sent for 8 s/);
  });

  it('does not fail a migration that already runs post-copy', () => {
    const w = new ConvergenceWatch({ postcopy: 'always', timeoutMs: 10 });
    expect(w.observe({ passes: 2, remainingBytes: 5, status: 'postcopy-active' }, 100).action).toBe('continue');
  });
});
