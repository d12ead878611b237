// Live migration of VMs between hosts (issue 12): the request, the engine's
// front (Migrations), the phases (run-migration.ts) and crash recovery; group
// migrations (issue 13); policies per fleet and host (policy.ts, policies.ts),
// the per-host limits and their queue shared by every controller
// (admission.ts), and host drains (drain.ts).
export { Migrations, MIGRATE_TASK_KIND } from './migrations.ts';
export type { PolicyMigrateResult } from './migrations.ts';
export { migrateRequestSchema, parseRate } from './migrate-request.ts';
export type { MigrateRequest } from './migrate-request.ts';
export type { MigrateResult } from './run-migration.ts';
export type { MigrationProgress } from './transfer.ts';
export type { MigrateJournal } from './migrate-journal.ts';
export { recoverMigration } from './recover-migration.ts';
export { recoverGroup } from './recover-group.ts';
export { GroupMigrations, GROUP_MIGRATE_TASK_KIND } from './group-migrations.ts';
export { groupMigrateRequestSchema } from './group-request.ts';
export type { GroupMigrateRequest, GroupMode } from './group-request.ts';
export type { GroupJournal, GroupMigrateResult, GroupMemberResult } from './run-group.ts';
export { DEFAULT_POLICY, FLEET_SCOPE, POLICY_FIELDS, POSTCOPY_MODES, applyPatch, cleanPolicy, policyPatchSchema, resolvePolicy } from './policy.ts';
export type { MigrationPolicy, MigrationPolicyStore, PolicyField, PolicyPatch, PolicySource, ResolvedPolicy } from './policy.ts';
export { MigrationLimitError } from './admission.ts';
export type { MigrationControlStore, MigrationQueueEntry, MigrationQueueStore, QueuedProgress, SlotNeeds } from './admission.ts';
export { MigrationPolicies } from './policies.ts';
export type { PolicyView } from './policies.ts';
export { HostDrains, DRAIN_TASK_KIND, MIGRATION_TASK_KINDS, drainRequestSchema } from './drain.ts';
export type { DrainMoved, DrainNotMoved, DrainResult, DrainRequest } from './drain.ts';
