// Which VM actions the console offers in which state. This mirrors
// OPERATION_REQUIRES in src/vm/state.ts (a unit test keeps the two equal; that
// module cannot load in a browser); the daemon refuses anything else with
// ILLEGAL_STATE in any case, and the console shows that error.
import type { VmState } from './api.ts';

export const OPERATION_REQUIRES = {
  start: ['created', 'stopped', 'failed'],
  stop: ['running', 'paused'],
  pause: ['running'],
  resume: ['paused'],
  kill: ['starting', 'running', 'paused', 'stopping'],
  delete: ['created', 'stopped', 'failed'],
  exec: ['running'],
  fork: ['running', 'paused'],
  checkpoint: ['running', 'paused'],
  migrate: ['running', 'paused'],
} as const satisfies Record<string, readonly VmState[]>;

export type VmOperation = keyof typeof OPERATION_REQUIRES;

export function allows(state: VmState, operation: VmOperation): boolean {
  return (OPERATION_REQUIRES[operation] as readonly VmState[]).includes(state);
}

/** States in which a QEMU process is expected to exist (LIVE_STATES in src/vm/state.ts). */
export const LIVE_STATES: readonly VmState[] = ['starting', 'running', 'paused', 'forking', 'checkpointing', 'migrating', 'stopping', 'unknown'];

export function isLive(state: VmState): boolean {
  return LIVE_STATES.includes(state);
}

/** A clone is made of a stopped or a running VM (see src/vm/storage/clone.ts). */
export function canClone(state: VmState): boolean {
  return state === 'running' || state === 'paused' || state === 'stopped' || state === 'created';
}
