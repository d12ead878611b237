// The agent calls of a group migration's switch-over (issue 13), spread into
// AGENT_CALLS (calls.ts), beside the single migration's (calls-migration.ts):
//
//   source       setMigrationParameters  a running migration's downtime limit and bandwidth
//                                        cap change (QEMU 7.2 applies migrate-set-parameters
//                                        to a running pre-copy at its next rate period), so
//                                        the controller keeps early members iterating with
//                                        the guest running and lets all converge together
//   destination  startIncoming           a guest whose migration completed here and that
//                                        was kept paused (prepareIncoming with `holdAfter`:
//                                        -S, late-block-activate, no cont) runs now
//   source       revertOutgoing          a migration that completed here but whose
//                                        destination never ran the guest (held, then
//                                        removed) is undone: the source QEMU, in
//                                        `postmigrate`, re-activates its disks and runs on
//
// With these a group's destinations all start only once every member has
// completed, and a member failing before that rolls every member back.
import { z } from 'zod';
import { OffshootError } from '../common/index.ts';
import { call } from './call-def.ts';
import { incomingResultSchema } from './calls-migration.ts';
import { vmIdSchema } from './schemas.ts';

const vmRef = z.object({ vmId: vmIdSchema });

/**
 * setMigrationParameters' rule for a change decided on `pass`: stale (ignored, the limits in force answered) when its
 * source braked itself after its first pass and it was decided on that pass, or when it was decided before the pass
 * its source parked itself at. Every implementation of the call applies this one rule.
 */
export function isStaleParameterChange(source: { selfBraked: boolean; selfParkedPass: number | null }, pass: number | undefined): boolean {
  if (pass === undefined) return false;
  return (source.selfBraked && pass < 2) || (source.selfParkedPass !== null && pass < source.selfParkedPass);
}

/**
 * A group member's source reached its switch-over while not allowed to wait held there (migrateOut's holdAllowed
 * false: the group is not near its switch-over): it rolled itself back at once, its guest runs on there. `stoppedAt`
 * and `resumedAt` (ISO 8601, the source's clock) bound the guest's pause.
 */
export class MigrationSentBackError extends OffshootError {
  constructor(vmId: string, details: { stoppedAt: string | null; resumedAt: string }) {
    super('MIGRATION_SENT_BACK', `the migration of VM ${vmId} reached its switch-over while its group could not hold it: it was rolled back, the VM runs on at its source`, { vmId, ...details }, 409);
  }
}

export const GROUP_CALLS = {
  setMigrationParameters: call(
    "source: changes a running migration's downtime limit and/or bandwidth cap (memory and disk mirrors), unless decided on its first pass after the source braked itself at its end, or on a pass before the one it parked itself at; answers the values now in force",
    z.object({
      vmId: vmIdSchema,
      downtimeLimitMs: z.number().int().min(1).max(600_000).optional(),
      maxBandwidthBytesPerSecond: z.number().int().positive().optional(),
      pass: z.number().int().min(0).optional().describe('the pass (dirty-sync count) the caller saw when it decided: a change decided during the first pass is ignored once the source braked itself after it (migrateOut brakeAfterFirstPass), and one decided before the pass it parked itself at (parkBelowBytes) is ignored'),
      parkBelowBytes: z.number().int().min(0).optional().describe("until the next change: a group member's source brakes itself to its brakeAfterFirstPass limits as soon as a pass past its first (and from parkFromPass on) begins with at most this many bytes (its reports then give selfParked, that pass)"),
      parkFromPass: z.number().int().min(0).optional().describe('with parkBelowBytes: the first pass it may park at (the one after a pass that sends what its guest dirtied while it was braked)'),
      holdAllowed: z.boolean().optional().describe("a group member (migrateOut's hold): whether it may wait held at its switch-over from now on (else it rolls itself back there, MIGRATION_SENT_BACK); applied even when the limits are stale"),
    }),
    z.object({ downtimeLimitMs: z.number(), maxBandwidthBytesPerSecond: z.number() }),
  ),
  startIncoming: call('destination: a migrated guest kept paused after its migration completed (prepareIncoming with holdAfter) runs here now; the QEMU becomes this host\'s VM', vmRef, incomingResultSchema),
  revertOutgoing: call(
    "source: a migration that completed here but whose destination never ran the guest is undone: the guest runs on here (`cont` re-activates its disks), or stays paused when `resume` is false (it was paused); answers the migration status found (idempotent: `running` when it already runs here)",
    z.object({ vmId: vmIdSchema, resume: z.boolean().default(true) }),
    z.object({ status: z.string() }),
  ),
} as const;
