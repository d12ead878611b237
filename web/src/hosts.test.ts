import { describe, expect, it } from 'vitest';
import type { VmRecord } from './api.ts';
import { hostFromApi } from './api.ts';
import { summarizeHosts } from './hosts.ts';

const at = '2026-01-01T00:00:00.000Z';
function vm(id: string, state: VmRecord['state'], template: string | null, host?: string): VmRecord {
  const record: VmRecord = {
    id,
    name: id,
    state,
    stateReason: null,
    spec: { vcpus: 1, memoryMiB: 256, boot: { kind: 'disk' }, disks: [], nics: [], defaultGuest: true },
    hostId: 'h1',
    runtime: state === 'running' ? { hostId: 'h1', pid: 1, accel: 'tcg', instance: 'i', memory: { mode: template ? 'derived' : 'owned', templateId: template }, startedAt: at } : null,
    createdAt: at,
    updatedAt: at,
  };
  return host ? ({ ...record, host } as VmRecord) : record;
}

describe('host summaries', () => {
  it('count VMs by state and sum the memory of the live ones', () => {
    const vms = [vm('a', 'running', 'T'), vm('b', 'running', 'T'), vm('c', 'stopped', null), vm('d', 'running', null)];
    const memory = { a: { rssKiB: 200 * 1024, pssKiB: 100 * 1024, sharedKiB: 0, privateKiB: 0, mode: 'derived', templateId: 'T' }, b: { rssKiB: 200 * 1024, pssKiB: 100 * 1024, sharedKiB: 0, privateKiB: 0, mode: 'derived', templateId: 'T' } };
    const [h] = summarizeHosts([{ id: 'h1', name: 'h1', state: 'up' }], vms, memory);
    expect(h?.byState).toEqual({ running: 3, stopped: 1 });
    expect(h?.live).toBe(3);
    expect(h?.derived).toBe(2);
    expect(h?.owned).toBe(1);
    expect(h?.templates).toBe(1);
    expect(h?.configuredBytes).toBe(3 * 256 * 1024 * 1024);
    expect(h?.savedBytes).toBe(200 * 1024 * 1024);
    expect(h?.memoryUnknown).toBe(1);
  });

  it('places VMs by their host field once VMs have one, including hosts not listed', () => {
    const summaries = summarizeHosts([{ id: 'h1', name: 'h1', state: 'up' }], [vm('a', 'stopped', null, 'h2'), vm('b', 'stopped', null)], {});
    expect(summaries.map((s) => [s.host.id, s.host.state, s.vms.length])).toEqual([['h1', 'up', 1], ['h2', 'unknown', 1]]);
  });

  it('reads an entry of GET /hosts', () => {
    expect(hostFromApi({ id: 'h2', name: 'lab-b', state: 'up', memory: { totalBytes: 8, freeBytes: 3 } })).toMatchObject({ id: 'h2', name: 'lab-b', state: 'up', memoryTotalBytes: 8, memoryFreeBytes: 3 });
  });
});
