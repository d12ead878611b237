// Live migration of VMs between hosts (issue 12): the request, the engine's
// front (Migrations), the phases (run-migration.ts) and crash recovery.
export { Migrations } from './migrations.ts';
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
