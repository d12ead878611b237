// The inventory contract on SQLite files, plus SQLite's own promise: the
// released migrations still create exactly the tables they always did.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Migrator, sql } from 'kysely';
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from './connect.ts';
import { inventoryContract } from './inventory-contract.ts';
import { migrationProvider } from './migrations.ts';

const dir = mkdtempSync(join(tmpdir(), 'offshoot-inv-'));
let n = 0;
afterAll(() => rmSync(dir, { recursive: true, force: true }));

inventoryContract('SQLite', { freshLocation: async () => join(dir, `inventory-${++n}.sqlite`) });

/** sqlite_master of migrations 0001-0003 as the released code (before PostgreSQL) created it. */
const RELEASED_SCHEMA: Record<string, string> = {
  checkpoints: 'CREATE TABLE "checkpoints" ("id" text primary key, "name" text not null unique, "vm_id" text not null, "vm_name" text not null, "path" text not null, "state" text not null, "memory_bytes" integer not null, "file_bytes" integer, "spec" text not null, "created_at" text not null)',
  copy_jobs: 'CREATE TABLE "copy_jobs" ("id" text primary key, "name" text, "doc" text not null, "created_at" text not null)',
  datastores: 'CREATE TABLE "datastores" ("name" text primary key, "path" text not null unique, "created_at" text not null)',
  disks: 'CREATE TABLE "disks" ("id" text primary key, "name" text not null, "datastore" text not null, "path" text not null unique, "format" text not null, "content_id" text not null, "parent_id" text, "virtual_size" integer not null, "read_only" integer not null, "created_at" text not null, constraint "disks_name_per_datastore" unique ("datastore", "name"))',
  pools: 'CREATE TABLE "pools" ("id" text primary key, "name" text, "doc" text not null, "created_at" text not null)',
  tasks: 'CREATE TABLE "tasks" ("seq" integer primary key autoincrement, "id" text not null unique, "kind" text not null, "target_id" text not null, "target_name" text not null, "state" text not null, "progress" real default 0 not null, "message" text default \'\' not null, "result" text, "error" text, "created_at" text not null, "updated_at" text not null)',
  tasks_target: 'CREATE INDEX "tasks_target" on "tasks" ("target_id")',
  vms: 'CREATE TABLE "vms" ("id" text primary key, "name" text not null unique, "state" text not null, "state_reason" text, "spec" text not null, "runtime" text, "created_at" text not null, "updated_at" text not null)',
};

describe('SQLite migrations', () => {
  it('released migrations create the same tables as before PostgreSQL support', async () => {
    const handle = await connect(join(dir, 'released.sqlite'));
    try {
      const { error } = await new Migrator({ db: handle.db, provider: migrationProvider(handle.dialect) }).migrateTo('0003-storage');
      expect(error).toBeUndefined();
      const { rows } = await sql<{ name: string; sql: string }>`select name, sql from sqlite_master where sql is not null and name not like 'kysely%' and name != 'sqlite_sequence'`.execute(handle.db);
      expect(Object.fromEntries(rows.map((r) => [r.name, r.sql]))).toEqual(RELEASED_SCHEMA);
    } finally {
      await handle.close();
    }
  });
});
