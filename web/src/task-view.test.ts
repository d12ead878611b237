import { describe, expect, it } from 'vitest';
import type { TaskRecord, VmRecord } from './api.ts';
import { forkChildren, migrationFigures, orderTasks, resultSummary, taskTitle } from './task-view.ts';

const at = (s: number) => new Date(Date.UTC(2026, 0, 1, 0, 0, s)).toISOString();
function task(patch: Partial<TaskRecord>): TaskRecord {
  return { id: 't', kind: 'vm.fork', targetId: 's', targetName: 'src', state: 'running', progress: 0.4, message: 'starting 2 children', result: null, error: null, createdAt: at(10), updatedAt: at(11), ...patch };
}
function vm(id: string, name: string, stateReason: string | null, createdAt: string): VmRecord {
  return { id, name, state: 'starting', stateReason, hostId: 'h1', spec: { vcpus: 1, memoryMiB: 256, boot: { kind: 'disk' }, disks: [], nics: [], defaultGuest: true }, runtime: null, createdAt, updatedAt: createdAt };
}

describe('task views', () => {
  it('shows the children of a running fork as they appear, and from its result when done', () => {
    const vms = [vm('a', 'src-c1', 'forked from src', at(12)), vm('old', 'src-c0', 'forked from src', at(1)), vm('x', 'other', null, at(12))];
    expect(forkChildren(task({}), vms)).toEqual([{ name: 'src-c1', state: 'starting' }]);
    const done = task({ state: 'succeeded', result: { source: { id: 's' }, children: [{ id: 'a', name: 'src-c1' }, { id: 'gone', name: 'src-c2' }], timings: { stunMs: 12.3, allChildrenMs: 800 } } });
    expect(forkChildren(done, vms)).toEqual([{ name: 'src-c1', state: 'starting' }, { name: 'src-c2', state: 'deleted' }]);
    expect(resultSummary(done)).toBe('2 children (src-c1, src-c2); stun 12 ms; all running after 800 ms');
    expect(taskTitle(done)).toBe('Fork src');
  });

  it('reads the figures of a migration', () => {
    const m = task({ kind: 'vm.migrate', result: { progress: { pass: 3, remainingBytes: 1048576, dirtyBytesPerSecond: 2e6 }, timings: { downtimeMs: 12 } } });
    expect(migrationFigures(m)).toEqual({ pass: 3, remainingBytes: 1048576, dirtyBytesPerSecond: 2e6, downtimeMs: 12, totalMs: undefined });
    expect(migrationFigures(task({}))).toBeNull();
  });

  it('lists running tasks first, then the newest', () => {
    const tasks = [task({ id: 'old', state: 'succeeded', createdAt: at(1) }), task({ id: 'new', state: 'failed', createdAt: at(5) }), task({ id: 'run', createdAt: at(0) })];
    expect(orderTasks(tasks).map((t) => t.id)).toEqual(['run', 'new', 'old']);
  });
});
