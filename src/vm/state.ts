// The VM lifecycle: an explicit union of states, the transitions between them,
// and the guard every operation calls before it acts. An illegal transition is
// an IllegalStateError (HTTP 409), never a silent no-op.
import { IllegalStateError } from '../common/index.ts';

export const VM_STATES = ['created', 'starting', 'running', 'paused', 'forking', 'checkpointing', 'migrating', 'stopping', 'stopped', 'failed', 'unknown'] as const;
export type VmState = (typeof VM_STATES)[number];

export function isVmState(value: string): value is VmState {
  return (VM_STATES as readonly string[]).includes(value);
}

/** States in which a QEMU process is expected to exist for the VM (`unknown`: its host is unreachable, it may still run). */
export const LIVE_STATES: readonly VmState[] = ['starting', 'running', 'paused', 'forking', 'checkpointing', 'migrating', 'stopping', 'unknown'];

/** States in which an operation (fork, checkpoint, migration) owns the VM and handles its QEMU's end itself. */
export const BUSY_STATES: readonly VmState[] = ['forking', 'checkpointing', 'migrating'];

export function isLive(state: VmState): boolean {
  return LIVE_STATES.includes(state);
}

/** Every transition the engine may make; anything else is a bug or a race and is refused. */
const TRANSITIONS: Record<VmState, readonly VmState[]> = {
  created: ['starting'],
  starting: ['running', 'paused', 'stopped', 'failed', 'unknown'],
  running: ['paused', 'forking', 'checkpointing', 'migrating', 'stopping', 'stopped', 'failed', 'unknown'],
  paused: ['running', 'forking', 'checkpointing', 'migrating', 'stopping', 'stopped', 'failed', 'unknown'],
  // A fork or a checkpoint owns its VM: nothing else may act on it until it has resumed it.
  forking: ['running', 'paused', 'stopped', 'failed', 'unknown'],
  checkpointing: ['running', 'paused', 'stopped', 'failed', 'unknown'],
  // A migration owns its VM until it runs at one host: the destination after the switch-over, else the source.
  migrating: ['running', 'paused', 'stopped', 'failed', 'unknown'],
  stopping: ['stopped', 'failed', 'unknown'],
  stopped: ['starting'],
  failed: ['starting', 'stopped'],
  // Its host missed its lease: nothing acts on it until the host answers again and its QEMU is re-adopted (or found gone).
  unknown: ['running', 'paused', 'stopped', 'failed'],
};

export function canTransition(from: VmState, to: VmState): boolean {
  return TRANSITIONS[from].includes(to);
}

/** The user-facing operations and the states each one requires. */
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

/** Throws IllegalStateError unless `state` allows `operation`. */
export function assertOperationAllowed(vmName: string, state: VmState, operation: VmOperation): void {
  const required: readonly VmState[] = OPERATION_REQUIRES[operation];
  if (!required.includes(state)) {
    throw new IllegalStateError(`VM "${vmName}"`, state, required, operation);
  }
}

/** Throws IllegalStateError if the engine tries a transition the lifecycle does not have. */
export function assertTransition(vmName: string, from: VmState, to: VmState): void {
  if (!canTransition(from, to)) {
    throw new IllegalStateError(`VM "${vmName}"`, from, Object.keys(TRANSITIONS).filter((s) => canTransition(s as VmState, to)), `move to ${to}`);
  }
}
