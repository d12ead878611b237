import { describe, expect, it } from 'vitest';
import { LIVE_STATES as ENGINE_LIVE_STATES, OPERATION_REQUIRES as ENGINE_RULES } from '../../src/vm/index.ts';
import { LIVE_STATES, OPERATION_REQUIRES, allows } from './operations.ts';

describe("the console's VM action rules", () => {
  it("are the engine's own", () => {
    expect(OPERATION_REQUIRES).toEqual(ENGINE_RULES);
    expect(LIVE_STATES).toEqual(ENGINE_LIVE_STATES);
  });

  it('offer delete only for a VM that does not run', () => {
    expect(allows('stopped', 'delete')).toBe(true);
    expect(allows('running', 'delete')).toBe(false);
    expect(allows('running', 'fork')).toBe(true);
  });
});
