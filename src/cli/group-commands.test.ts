import { describe, expect, it } from 'vitest';
import { destinationsOf } from './group-commands.ts';

describe('vm migrate --to for a group', () => {
  it('gives every member the one host, or each its own (a bare host for the ones not named)', () => {
    expect(destinationsOf(['a', 'b'], 'h1')).toEqual([
      { vm: 'a', to: 'h1' },
      { vm: 'b', to: 'h1' },
    ]);
    expect(destinationsOf(['a', 'b'], 'a=h1, b=h2')).toEqual([
      { vm: 'a', to: 'h1' },
      { vm: 'b', to: 'h2' },
    ]);
    expect(destinationsOf(['a', 'b', 'c'], 'a=h1,h3')).toEqual([
      { vm: 'a', to: 'h1' },
      { vm: 'b', to: 'h3' },
      { vm: 'c', to: 'h3' },
    ]);
  });

  it('refuses a --to that leaves a member without a host, names another VM, or is malformed', () => {
    for (const [names, to] of [
      [['a', 'b'], 'a=h1'],
      [['a', 'b'], 'a=h1,x=h2,h3'],
      [['a', 'b'], 'a=h1,a=h2,h3'],
      [['a', 'b'], '=h1,h2'],
      [['a', 'b'], 'h1,h2'],
    ] as const) {
      expect(() => destinationsOf([...names], to), to).toThrow(expect.objectContaining({ code: 'INVALID_INPUT' }));
    }
  });
});
