// The one error a failed fork reports: which step failed and why. By then the
// source has been resumed and the children removed (see run-fork.ts).
import { OffshootError, toOffshootError } from '../../common/index.ts';

export const FORK_STEPS = ['plan', 'prepare', 'switch', 'start children', 'customize', 'flatten disks'] as const;
export type ForkStep = (typeof FORK_STEPS)[number];

export class ForkFailedError extends OffshootError {
  readonly step: ForkStep;
  constructor(source: string, step: ForkStep, cause: unknown, details: Record<string, unknown> = {}) {
    const inner = toOffshootError(cause);
    super('FORK_FAILED', `fork of VM "${source}" failed at step "${step}": ${inner.message}`, { source, step, cause: inner.toJSON(), ...details }, inner.status === 500 ? 500 : inner.status, { cause });
    this.step = step;
  }
}
