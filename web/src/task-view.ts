// What the console says about a task: its title, phase, progress, result in a
// line, or its error code; the children of a fork as they appear; and the
// figures of a live migration (pass, remaining memory, dirty rate, downtime),
// read from the task's result while it runs and when it ends (the migration
// task fills these in; until it lands the console shows its message).
import type { TaskRecord, VmRecord } from './api.ts';
import { formatBytes, formatDuration } from './format.ts';

const KIND_LABELS: Record<string, string> = {
  'vm.start': 'Start',
  'vm.stop': 'Stop',
  'vm.fork': 'Fork',
  'vm.checkpoint': 'Checkpoint',
  'vm.restore': 'Restore',
  'vm.migrate': 'Migrate',
  'vm.clone.stream': 'Instant clone stream',
  'disk.flatten': 'Flatten',
};

export function taskTitle(task: TaskRecord): string {
  return `${KIND_LABELS[task.kind] ?? task.kind} ${task.targetName}`;
}

export interface MigrationFigures {
  pass?: number;
  remainingBytes?: number;
  dirtyBytesPerSecond?: number;
  downtimeMs?: number;
  totalMs?: number;
}

function record(value: unknown): Record<string, unknown> | undefined {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : undefined;
}
function num(...values: unknown[]): number | undefined {
  for (const v of values) if (typeof v === 'number' && Number.isFinite(v)) return v;
  return undefined;
}

export function migrationFigures(task: TaskRecord): MigrationFigures | null {
  if (task.kind !== 'vm.migrate') return null;
  const result = record(task.result) ?? {};
  const places = [record(result.migration), record(result.progress), record(result.timings), result].filter((p): p is Record<string, unknown> => p !== undefined);
  const pick = (...names: string[]) => num(...places.flatMap((p) => names.map((n) => p[n])));
  return {
    pass: pick('pass', 'passes', 'iteration'),
    remainingBytes: pick('remainingBytes', 'remaining'),
    dirtyBytesPerSecond: pick('dirtyBytesPerSecond', 'dirtyRate'),
    downtimeMs: pick('downtimeMs', 'downtime'),
    totalMs: pick('totalMs'),
  };
}

/** One line about a finished task's result, or null when there is nothing to add. */
export function resultSummary(task: TaskRecord): string | null {
  if (task.state !== 'succeeded') return null;
  const r = record(task.result) ?? {};
  switch (task.kind) {
    case 'vm.fork': {
      const children = Array.isArray(r.children) ? (r.children as { name?: string }[]) : [];
      const timings = record(r.timings) ?? {};
      return `${children.length} ${children.length === 1 ? 'child' : 'children'} (${children.map((c) => c.name).join(', ')}); stun ${formatDuration(num(timings.stunMs))}; all running after ${formatDuration(num(timings.allChildrenMs))}`;
    }
    case 'vm.checkpoint': {
      const checkpoint = record(r.checkpoint) ?? {};
      return `${String(checkpoint.name ?? 'checkpoint')}: stun ${formatDuration(num(r.stunMs))}; ${formatBytes(num(r.fileBytes))} written in ${formatDuration(num(r.writeMs))}`;
    }
    case 'vm.restore': {
      const vm = record(r.vm) ?? {};
      return `${String(vm.name ?? task.targetName)} running after ${formatDuration(num(r.runningMs))} (${String(r.mode ?? 'restore')})`;
    }
    case 'vm.stop':
      return r.forced ? 'killed: the guest did not power off in time' : 'powered off';
    case 'vm.start':
      return 'running';
    case 'vm.migrate': {
      const m = migrationFigures(task);
      return `downtime ${formatDuration(m?.downtimeMs)}; total ${formatDuration(m?.totalMs)}`;
    }
    default:
      return null;
  }
}

/** A fork's children: from its result once done, else the VMs that say they were forked from its source since it began. */
export function forkChildren(task: TaskRecord, vms: VmRecord[]): { name: string; state: string }[] {
  if (task.kind !== 'vm.fork') return [];
  const byId = new Map(vms.map((v) => [v.id, v]));
  const result = record(task.result);
  if (task.state === 'succeeded' && Array.isArray(result?.children)) {
    return (result.children as { id: string; name: string }[]).map((c) => ({ name: c.name, state: byId.get(c.id)?.state ?? 'deleted' }));
  }
  if (task.state !== 'running') return [];
  return vms.filter((v) => v.stateReason === `forked from ${task.targetName}` && v.createdAt >= task.createdAt).map((v) => ({ name: v.name, state: v.state }));
}

/** A checkpoint being written, or a migration before its switch-over, can be cancelled (POST /tasks/ID/cancel). */
export function isCancellable(task: TaskRecord): boolean {
  return task.state === 'running' && (task.kind === 'vm.checkpoint' || task.kind === 'vm.migrate');
}

/** Running tasks first, then newest first. */
export function orderTasks(tasks: TaskRecord[]): TaskRecord[] {
  return [...tasks].sort((a, b) => (a.state === 'running') === (b.state === 'running') ? b.createdAt.localeCompare(a.createdAt) : a.state === 'running' ? -1 : 1);
}
