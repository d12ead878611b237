import { describe, expect, it } from 'vitest';
import type { QmpClient } from '../../qemu/index.ts';
import { diskDataBytes, incomingPhases, migrationTimeline, outgoingPhases, phasesOf } from './qmp-steps.ts';

describe('migration phases', () => {
  it('measures each phase between the first entries found of its ends, 0 for a step not taken', () => {
    const entries: Array<[string, number]> = [['a', 100], ['b', 130], ['b', 500], ['c', 160]];
    expect(phasesOf(entries, { ab: [['a'], ['b']], bc: [['x', 'b'], ['c']], missing: [['a'], ['z']] })).toEqual({ ab: 30, bc: 30, missing: 0 });
  });

  it("splits a source's timeline: with TLS and mirrors, and without either", () => {
    const full: Array<[string, number]> = [
      ['start', 1000], ['tls-added', 1004], ['nbd-added:disk0', 1010], ['mirror-started:disk0', 1012], ['ready:mirror-disk0', 1020], ['mirrors-ready', 1021],
      ['configured', 1030], ['migrate-sent', 1031], ['qemu:setup', 1031], ['qemu:pass1', 1400], ['qemu:STOP', 4000], ['switch-over', 4010], ['qemu:completed', 4050], ['completed-seen', 4060], ['final-stats', 4065],
    ];
    expect(outgoingPhases(full)).toEqual({ creds: 4, mirrors: 17, configure: 10, memory: 2969, switchOver: 50, finish: 15 });
    const plain: Array<[string, number]> = [['start', 0], ['configured', 9], ['migrate-sent', 10], ['qemu:STOP', 2000], ['completed-seen', 2030], ['final-stats', 2031]];
    expect(outgoingPhases(plain)).toEqual({ creds: 0, mirrors: 0, configure: 10, memory: 1990, switchOver: 30, finish: 1 });
  });

  it("splits a destination's preparation", () => {
    const steps: Array<[string, number]> = [['prepare', 0], ['disks-created', 18], ['qemu-launched', 120], ['tls-added', 121], ['capabilities-set', 124], ['exported', 130], ['listening', 131]];
    expect(incomingPhases(steps)).toEqual({ disks: 18, qemuStart: 102, creds: 1, capabilities: 3, exports: 6, listen: 1 });
  });
});

describe('migration timeline', () => {
  it('keeps its first half and its latest entries, with how many were dropped between them', () => {
    const t = migrationTimeline(10, 'start');
    for (let i = 1; i <= 30; i++) t.mark(`pass${i}`, 1000 + i);
    const names = t.entries.map(([n]) => n);
    expect(names).toEqual(['start', 'pass1', 'pass2', 'pass3', 'pass4', 'dropped:22', 'pass27', 'pass28', 'pass29', 'pass30']);
    expect(t.entries[5]?.[1]).toBe(1027);
    const short = migrationTimeline(10, 'start');
    short.mark('a', 1);
    expect(short.entries.map(([n]) => n)).toEqual(['start', 'a']);
  });
});

describe('diskDataBytes', () => {
  const qmp = {
    execute: async (command: string) => {
      expect(command).toBe('query-named-block-nodes');
      return [
        { 'node-name': '#block123', image: { 'actual-size': 7 } },
        { 'node-name': 'disk0', image: { 'actual-size': 2 ** 20, 'backing-image': { 'actual-size': 50 * 2 ** 20 } } },
        { 'node-name': 'disk1', image: { 'actual-size': 2 ** 30 + 4096, 'backing-image': { 'actual-size': 3 * 2 ** 20, 'backing-image': { 'actual-size': 5 } } } },
      ];
    },
  } as unknown as QmpClient;

  it('counts the allocated bytes of the top for sync top and of the whole chain for sync full', async () => {
    expect(await diskDataBytes(qmp, [])).toBe(0);
    expect(await diskDataBytes(qmp, [{ node: 'disk0', sync: 'top' }])).toBe(2 ** 20);
    expect(await diskDataBytes(qmp, [{ node: 'disk0', sync: 'top' }, { node: 'disk1', sync: 'full' }])).toBe(2 ** 20 + 2 ** 30 + 4096 + 3 * 2 ** 20 + 5);
  });

  it('refuses a disk QEMU does not have', async () => {
    await expect(diskDataBytes(qmp, [{ node: 'disk9', sync: 'top' }])).rejects.toMatchObject({ code: 'MIGRATION_FAILED' });
  });
});
