// When a pre-copy migration stops converging. QEMU sends memory in passes; a
// guest that dirties memory faster than the path carries it never gets its
// remaining memory under what the downtime limit allows. The watch looks at
// each pass's remaining memory: with post-copy allowed (`auto`) it switches
// to post-copy once the best remaining figure has not improved by a tenth over
// `stallPasses` passes, or once the migration has used `postcopyAfter` of its
// time budget; `always` switches after the first full pass; `never` keeps
// pre-copy until the time budget ends, then the migration fails (and the VM
// runs on at the source). A stream that stopped moving (no byte sent for
// `stalledMs`: the path is cut or the destination hangs) is never switched to
// post-copy, which would stop the guest at the source with its memory on the
// far side of a dead path; it fails at the time budget instead.
export type PostcopyMode = 'auto' | 'never' | 'always';

export interface ConvergencePolicy {
  postcopy: PostcopyMode;
  timeoutMs: number;
  /** Passes without a tenth's improvement that count as not converging. */
  stallPasses?: number;
  /** Fraction of the time budget after which `auto` switches to post-copy anyway. */
  postcopyAfter?: number;
  /** No byte sent for this long: the stream is stalled (default 2000 ms). */
  stalledMs?: number;
}

export type ConvergenceDecision = { action: 'continue' } | { action: 'start-postcopy'; reason: string } | { action: 'fail'; reason: string };

export class ConvergenceWatch {
  private bestRemaining = Number.POSITIVE_INFINITY;
  private bestPass = 0;
  private switched = false;
  private lastSent = -1;
  private lastMovedMs = 0;

  constructor(private readonly policy: ConvergencePolicy) {}

  observe(stats: { passes: number; remainingBytes: number; status: string; transferredBytes?: number }, elapsedMs: number): ConvergenceDecision {
    if (stats.status.startsWith('postcopy')) this.switched = true;
    if (stats.transferredBytes === undefined || stats.transferredBytes !== this.lastSent) {
      this.lastSent = stats.transferredBytes ?? -1;
      this.lastMovedMs = elapsedMs;
    }
    const stalled = elapsedMs - this.lastMovedMs >= (this.policy.stalledMs ?? 2_000);
    if (!this.switched && elapsedMs > this.policy.timeoutMs) return { action: 'fail', reason: `not converged within ${this.policy.timeoutMs} ms (remaining ${stats.remainingBytes} bytes after ${stats.passes} passes${stalled ? `; nothing sent for ${Math.round((elapsedMs - this.lastMovedMs) / 1000)} s` : ''})` };
    if (this.switched || stalled || this.policy.postcopy === 'never' || stats.status !== 'active' || stats.passes < 1) return { action: 'continue' };
    if (this.policy.postcopy === 'always') return this.start('post-copy was asked for');
    if (stats.remainingBytes < this.bestRemaining * 0.9) {
      this.bestRemaining = stats.remainingBytes;
      this.bestPass = stats.passes;
    }
    const stall = this.policy.stallPasses ?? 3;
    if (stats.passes - this.bestPass >= stall) return this.start(`remaining memory did not fall by a tenth over ${stall} passes (${stats.remainingBytes} bytes left after pass ${stats.passes})`);
    if (elapsedMs > this.policy.timeoutMs * (this.policy.postcopyAfter ?? 0.5)) return this.start(`pre-copy used ${Math.round((this.policy.postcopyAfter ?? 0.5) * 100)} % of its time budget without converging`);
    return { action: 'continue' };
  }

  private start(reason: string): ConvergenceDecision {
    this.switched = true;
    return { action: 'start-postcopy', reason };
  }
}
