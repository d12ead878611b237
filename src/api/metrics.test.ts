// The metrics' mapping from engine events to series, for what the console's
// end-to-end test (tests/e2e/console.test.ts, real daemon and guest) cannot
// produce yet: a migration task's timings, copy jobs, a failed task's code,
// and VMs that name a host of their own. The engine here is its real event
// bus with a list of VM records; nothing runs QEMU.
import { Gauge } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { EventBus } from '../vm/index.ts';
import type { CopyJobRecord, TaskRecord, VmEngine, VmRecord } from '../vm/index.ts';
import { DaemonMetrics } from './metrics.ts';

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();

function setup(vms: VmRecord[] = []) {
  const events = new EventBus();
  const fleet = { hosts: () => [{ id: 'h-local', name: 'local' }, { id: 'h-b', name: 'lab-b' }], localHostId: 'h-local' };
  const engine = { events, fleet, list: async () => vms, memory: async () => ({ rssKiB: 0, pssKiB: 0, sharedKiB: 0, privateKiB: 0, mode: 'owned', templateId: null }) } as unknown as VmEngine;
  const metrics = new DaemonMetrics({ engine });
  const value = async (name: string, labels: Record<string, string> = {}) => {
    const metric = (await metrics.registry.getMetricsAsJSON()).find((m) => m.name === name.replace(/_(sum|count)$/, ''));
    const wanted = name.endsWith('_sum') || name.endsWith('_count') ? name : undefined;
    const values = (metric?.values ?? []) as { value: number; labels: Record<string, string | number>; metricName?: string }[];
    return values.find((v) => (wanted ? v.metricName === wanted : true) && Object.entries(labels).every(([k, l]) => String(v.labels[k]) === l))?.value;
  };
  const task = (patch: Partial<TaskRecord>): void => {
    events.publish({ type: 'task', task: { id: 't1', kind: 'vm.migrate', targetId: 'v', targetName: 'web', state: 'running', progress: 0, message: '', result: null, error: null, createdAt: at(0), updatedAt: at(0), ...patch }, at: at(0) });
  };
  return { events, metrics, value, task };
}

describe('daemon metrics', () => {
  it('spell a NaN value as the text format does (NaN), never as prom-client writes it (Nan)', async () => {
    const { metrics } = setup();
    new Gauge({ name: 'offshoot_test_nan', help: 'a value not known yet', registers: [metrics.registry] }).set(NaN);
    const { body } = await metrics.render();
    expect(body).toMatch(/^offshoot_test_nan NaN$/m);
    expect(body).not.toMatch(/ Nan$/m);
    metrics.close();
  });

  it('fill the migration histograms from a vm.migrate task, counting it once', async () => {
    const { metrics, value, task } = setup();
    task({});
    expect(await value('offshoot_tasks_running', { kind: 'vm.migrate' })).toBe(1);
    task({ state: 'succeeded', progress: 1, updatedAt: at(3), result: { timings: { downtimeMs: 25, totalMs: 2_900 } } });
    task({ state: 'succeeded', progress: 1, updatedAt: at(3), result: { timings: { downtimeMs: 25, totalMs: 2_900 } } });
    expect(await value('offshoot_tasks_total', { kind: 'vm.migrate', outcome: 'succeeded' })).toBe(1);
    expect(await value('offshoot_migration_downtime_seconds_sum')).toBeCloseTo(0.025);
    expect(await value('offshoot_migration_seconds_sum')).toBeCloseTo(2.9);
    expect(await value('offshoot_task_duration_seconds_sum', { kind: 'vm.migrate', outcome: 'succeeded' })).toBeCloseTo(3);
    expect(await value('offshoot_tasks_running', { kind: 'vm.migrate' })).toBeUndefined();
    metrics.close();
  });

  it('count a failed task by its error code', async () => {
    const { metrics, value, task } = setup();
    task({ kind: 'vm.fork', state: 'failed', error: { code: 'FORK_FAILED', message: 'x', details: {} } });
    expect(await value('offshoot_tasks_total', { kind: 'vm.fork', outcome: 'failed' })).toBe(1);
    expect(await value('offshoot_task_errors_total', { kind: 'vm.fork', code: 'FORK_FAILED' })).toBe(1);
    expect(await value('offshoot_fork_stun_seconds_count')).toBe(0);
    metrics.close();
  });

  it('measure copy bytes and the throughput of a job seen from its first chunk', async () => {
    const { events, metrics, value } = setup();
    const file = { source: '/a', target: '/b', disk: {} } as CopyJobRecord['files'][number];
    const job = (state: CopyJobRecord['state'], fileIndex: number, bytesDone: number): CopyJobRecord => ({
      id: 'j1',
      purpose: { kind: 'move', diskId: 'd' },
      state,
      datastore: 'ds',
      hostId: 'h-local',
      history: [],
      files: [file, file],
      progress: { fileIndex, bytesDone, bytesTotal: 64 * 1024 * 1024, chunksDone: bytesDone ? 1 : 0, chunksTotal: 1, chunksCopied: 0, workers: 1 },
      error: null,
      createdAt: at(0),
      updatedAt: at(0),
    });
    events.publish({ type: 'copy-job', job: job('running', 0, 0), at: at(0) });
    events.publish({ type: 'copy-job', job: job('running', 0, 64 * 1024 * 1024), at: at(0) });
    events.publish({ type: 'copy-job', job: job('running', 1, 0), at: at(0) });
    await new Promise((r) => setTimeout(r, 20));
    events.publish({ type: 'copy-job', job: job('succeeded', 2, 64 * 1024 * 1024), at: at(0) });
    expect(await value('offshoot_copy_bytes_total', { purpose: 'move' })).toBe(128 * 1024 * 1024);
    expect(await value('offshoot_copy_jobs_total', { purpose: 'move', outcome: 'succeeded' })).toBe(1);
    expect(await value('offshoot_copy_throughput_bytes_per_second_count', { purpose: 'move' })).toBe(1);
    expect(await value('offshoot_copy_throughput_bytes_per_second_sum', { purpose: 'move' })).toBeGreaterThan(0);
    metrics.close();
  });

  it('count VMs by the host they name, and every state of this host', async () => {
    const vm = (name: string, state: VmRecord['state'], host?: string) => ({ id: name, name, state, runtime: null, hostId: host === 'lab-b' ? 'h-b' : 'h-local' }) as unknown as VmRecord;
    const { metrics, value } = setup([vm('a', 'running', 'lab-b'), vm('b', 'stopped')]);
    expect(await value('offshoot_vms', { state: 'running', host: 'lab-b' })).toBe(1);
    expect(await value('offshoot_vms', { state: 'stopped', host: 'local' })).toBe(1);
    expect(await value('offshoot_vms', { state: 'failed', host: 'local' })).toBe(0);
    metrics.close();
  });
});
