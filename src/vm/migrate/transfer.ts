// Phases `prepare` and `transfer` of a migration. prepare: the destination's
// agent creates the target disks and a QEMU waiting for the migration on the
// path's address, and starts awaiting it (awaitIncoming, an operation the
// destination finishes by itself: it resumes the guest as soon as the
// migration completed, or, for a group member (holdAfter), keeps it paused
// until the group starts it). transfer: the source's agent mirrors the copied disks
// and migrates memory (migrateOut), reporting passes, remaining memory, dirty
// rate, bandwidth, expected downtime and mirror progress, which become the
// task's live progress; a cancel reaches the source's operation, which rolls
// itself back unless the switch-over has begun.
import type { AgentClient, IncomingResult, MigrateOutResult, MigrationTuning, VmRuntime } from '../../protocol/index.ts';
import { follow, runOperation } from '../../protocol/index.ts';
import type { VmRecord } from '../records.ts';
import type { TaskContext } from '../tasks.ts';
import type { MigrateJournal } from './migrate-journal.ts';
import type { MigrationPlan } from './plan-migration.ts';

/** The task's live progress of a migration. */
export type MigrationProgress = {
  phase: string;
  pass: number;
  remainingBytes: number;
  dirtyBytesPerSecond: number;
  bandwidthBytesPerSecond: number;
  expectedDowntimeMs: number | null;
  diskDoneBytes: number;
  diskTotalBytes: number;
};

export async function prepareDestination(destination: AgentClient, vm: VmRecord, plan: MigrationPlan, journal: MigrateJournal, request: { postcopy: boolean; multifdChannels: number; tls: boolean; resume: boolean; holdAfter?: boolean }): Promise<{ runtime: VmRuntime; migration: { host: string; port: number }; nbd: { host: string; port: number } | null; phasesMs?: Record<string, number> }> {
  const prepared = await runOperation(destination, 'prepareIncoming', { operationId: journal.prepareOperationId, vmId: vm.id, name: vm.name, spec: plan.destinationSpec, disks: plan.incoming, pathId: journal.pathId, ...request });
  await destination.awaitIncoming({ operationId: journal.awaitOperationId, vmId: vm.id });
  return prepared;
}

export async function transferVm(source: AgentClient, vm: VmRecord, plan: MigrationPlan, journal: MigrateJournal, target: { migration: { host: string; port: number }; nbd: { host: string; port: number } | null }, tuning: MigrationTuning, ctx: TaskContext, signal: AbortSignal): Promise<MigrateOutResult> {
  let last = 0;
  let lastStep = '';
  return runOperation(source, 'migrateOut', { operationId: journal.migrateOperationId, vmId: vm.id, pathId: journal.pathId, migration: target.migration, nbd: target.nbd, disks: plan.mirrors, tuning, hold: false }, {
    signal,
    onProgress: (e) => {
      const d = (e.data ?? {}) as Partial<MigrationProgress>;
      const progress: MigrationProgress = { phase: d.phase ?? 'memory', pass: d.pass ?? 0, remainingBytes: d.remainingBytes ?? 0, dirtyBytesPerSecond: d.dirtyBytesPerSecond ?? 0, bandwidthBytesPerSecond: d.bandwidthBytesPerSecond ?? 0, expectedDowntimeMs: d.expectedDowntimeMs ?? null, diskDoneBytes: d.diskDoneBytes ?? 0, diskTotalBytes: d.diskTotalBytes ?? 0 };
      // At most a few updates a second into the inventory, but never one that begins a phase or a pass (a short memory
      // phase's reports came within 250 ms of the disks' last, and the task showed no pass at all).
      const now = Date.now();
      const step = `${progress.phase}:${progress.pass}`;
      if (now - last < 250 && step === lastStep && progress.phase !== 'switching') return;
      last = now;
      lastStep = step;
      void ctx.progress(0.1 + 0.85 * e.progress, e.message, progress).catch(() => undefined);
    },
  });
}

/** The destination's outcome: the guest runs there (or stays paused, as it was). */
export function awaitDestination(destination: AgentClient, journal: MigrateJournal): Promise<IncomingResult> {
  return follow<'awaitIncoming'>(destination, journal.awaitOperationId);
}
