import { describe, expect, it } from 'vitest';
import { IllegalStateError } from '../common/index.ts';
import { OPERATION_REQUIRES, VM_STATES, assertOperationAllowed, canTransition } from './state.ts';

describe('VM lifecycle', () => {
  it('allows each operation only in its required states', () => {
    for (const [operation, required] of Object.entries(OPERATION_REQUIRES)) {
      for (const state of VM_STATES) {
        const allowed = (required as readonly string[]).includes(state);
        const call = () => assertOperationAllowed('vm1', state, operation as keyof typeof OPERATION_REQUIRES);
        if (allowed) expect(call).not.toThrow();
        else expect(call).toThrow(IllegalStateError);
      }
    }
  });

  it('reports state and required states in the error', () => {
    try {
      assertOperationAllowed('web', 'stopped', 'pause');
      expect.unreachable();
    } catch (err) {
      const e = err as IllegalStateError;
      expect(e.code).toBe('ILLEGAL_STATE');
      expect(e.status).toBe(409);
      expect(e.state).toBe('stopped');
      expect(e.required).toEqual(['running']);
      expect(e.message).toContain('web');
    }
  });

  it('has no transition out of a state into itself and none from stopped to running directly', () => {
    for (const s of VM_STATES) expect(canTransition(s, s)).toBe(false);
    expect(canTransition('stopped', 'running')).toBe(false);
    expect(canTransition('stopped', 'starting')).toBe(true);
    expect(canTransition('running', 'failed')).toBe(true);
  });

  it('every operation target state is reachable from a state that allows the operation', () => {
    expect(canTransition('running', 'paused')).toBe(true);
    expect(canTransition('paused', 'running')).toBe(true);
    expect(canTransition('running', 'stopping')).toBe(true);
    expect(canTransition('stopping', 'stopped')).toBe(true);
  });
});
