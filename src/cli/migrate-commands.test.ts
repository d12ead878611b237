import { describe, expect, it } from 'vitest';
import type { TaskRecord } from '../vm/index.ts';
import { progressLine } from './migrate-commands.ts';

const task = (patch: Partial<TaskRecord>): TaskRecord => ({ id: 't', kind: 'vm.migrate', targetId: 'v', targetName: 'vm', state: 'running', progress: 0.5, message: 'memory pass 2', result: null, error: null, createdAt: '', updatedAt: '', ...patch });

describe('vm migrate progress line', () => {
  it('shows a bar and the live figures of the task', () => {
    const line = progressLine(task({ result: { progress: { phase: 'memory', pass: 2, remainingBytes: 64 * 2 ** 20, dirtyBytesPerSecond: 8 * 2 ** 20, bandwidthBytesPerSecond: 100 * 2 ** 20, expectedDowntimeMs: 30, diskDoneBytes: 2 ** 20, diskTotalBytes: 2 ** 20 } } }));
    expect(line).toContain('[############............]  50%');
    expect(line).toContain('pass 2, 64 MiB left, dirty 8 MiB/s, 100 MiB/s');
    expect(line).toContain('disks 1/1 MiB');
    expect(line).toContain('downtime ~30 ms');
  });

  it('shows the message alone before the figures come and once the task ended', () => {
    expect(progressLine(task({ message: 'planning' }))).toMatch(/planning$/);
    expect(progressLine(task({ state: 'succeeded', progress: 1, message: 'done', result: { progress: { phase: 'memory' } } }))).toMatch(/100% done$/);
  });

  it('shows where a queued migration stands instead of figures', () => {
    const line = progressLine(task({ progress: 0, message: 'queued (position 2): waiting for 1 older migration(s) queued for host a (outgoing)', result: { progress: { phase: 'queued', position: 2, waitingFor: '1 older migration(s)' } } }));
    expect(line).toMatch(/queued \(position 2\): waiting for 1 older migration\(s\) queued for host a \(outgoing\)$/);
    expect(line).not.toContain('pass');
  });
});
