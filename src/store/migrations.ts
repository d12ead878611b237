// Schema migrations of the inventory, in order. Never change what a released
// one does: add the next. Kysely's Migrator records which ran in its own table;
// the schema's version is the number of migrations run.
// Migrations take their column types from the dialect (dialect.ts): on SQLite
// the released ones emit exactly the SQL they always did; on PostgreSQL their
// 64-bit integers become bigint, fractions double precision, and the
// auto-increment key bigserial.
import type { Kysely, Migration, MigrationProvider } from 'kysely';
import { sql } from 'kysely';
import type { StoreDialect } from './dialect.ts';

function migrationsFor(t: StoreDialect): Record<string, Migration> {
  return {
    '0001-vms-and-tasks': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('vms')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('state_reason', 'text')
          .addColumn('spec', 'text', (c) => c.notNull())
          .addColumn('runtime', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await t
          .serialKey(db.schema.createTable('tasks'), 'seq')
          .addColumn('id', 'text', (c) => c.notNull().unique())
          .addColumn('kind', 'text', (c) => c.notNull())
          .addColumn('target_id', 'text', (c) => c.notNull())
          .addColumn('target_name', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('progress', t.float64, (c) => c.notNull().defaultTo(0))
          .addColumn('message', 'text', (c) => c.notNull().defaultTo(''))
          .addColumn('result', 'text')
          .addColumn('error', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('tasks_target').on('tasks').column('target_id').execute();
        await sql`select 1`.execute(db);
      },
    },
    '0002-checkpoints': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('checkpoints')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('vm_id', 'text', (c) => c.notNull())
          .addColumn('vm_name', 'text', (c) => c.notNull())
          .addColumn('path', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('memory_bytes', t.int64, (c) => c.notNull())
          .addColumn('file_bytes', t.int64)
          .addColumn('spec', 'text', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();
      },
    },
    '0003-storage': {
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('datastores')
          .addColumn('name', 'text', (c) => c.primaryKey())
          .addColumn('path', 'text', (c) => c.notNull().unique())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('disks')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull())
          .addColumn('datastore', 'text', (c) => c.notNull())
          .addColumn('path', 'text', (c) => c.notNull().unique())
          .addColumn('format', 'text', (c) => c.notNull())
          .addColumn('content_id', 'text', (c) => c.notNull())
          .addColumn('parent_id', 'text')
          .addColumn('virtual_size', t.int64, (c) => c.notNull())
          .addColumn('read_only', 'integer', (c) => c.notNull())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addUniqueConstraint('disks_name_per_datastore', ['datastore', 'name'])
          .execute();
        // Copy jobs and pools are documents: their shape is owned by the VM layer's storage records.
        for (const table of ['copy_jobs', 'pools']) {
          await db.schema
            .createTable(table)
            .addColumn('id', 'text', (c) => c.primaryKey())
            .addColumn('name', 'text')
            .addColumn('doc', 'text', (c) => c.notNull())
            .addColumn('created_at', 'text', (c) => c.notNull())
            .execute();
        }
      },
    },
    '0004-coordination': {
      // Several controllers over one database (issue 11): VM versions, per-VM
      // operation claims, GC pins, task leases, controllers' leases, large
      // events by id, API tokens.
      async up(db: Kysely<unknown>) {
        await db.schema.alterTable('vms').addColumn('version', t.int64, (c) => c.notNull().defaultTo(0)).execute();
        await db.schema.alterTable('tasks').addColumn('owner', 'text').execute();
        await db.schema.alterTable('tasks').addColumn('lease_expires_at', t.int64).execute();
        await db.schema.createIndex('tasks_state_lease').on('tasks').columns(['state', 'lease_expires_at']).execute();
        await db.schema.createIndex('tasks_owner').on('tasks').column('owner').execute();
        await db.schema
          .createTable('vm_claims')
          .addColumn('vm_id', 'text', (c) => c.primaryKey())
          .addColumn('owner', 'text', (c) => c.notNull())
          .addColumn('operation', 'text', (c) => c.notNull())
          .addColumn('token', 'text', (c) => c.notNull())
          .addColumn('claimed_at', t.int64, (c) => c.notNull())
          .addColumn('expires_at', t.int64, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('gc_pins')
          .addColumn('path', 'text', (c) => c.notNull())
          .addColumn('holder', 'text', (c) => c.notNull())
          .addColumn('owner', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addPrimaryKeyConstraint('gc_pins_pk', ['holder', 'path'])
          .execute();
        await db.schema.createIndex('gc_pins_owner').on('gc_pins').column('owner').execute();
        await db.schema
          .createTable('controllers')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('url', 'text')
          .addColumn('started_at', 'text', (c) => c.notNull())
          .addColumn('heartbeat_at', t.int64, (c) => c.notNull())
          .addColumn('lease_expires_at', t.int64, (c) => c.notNull())
          .execute();
        await t
          .serialKey(db.schema.createTable('event_payloads'), 'id')
          .addColumn('origin', 'text', (c) => c.notNull())
          .addColumn('payload', 'text', (c) => c.notNull())
          .addColumn('created_at', t.int64, (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('api_tokens')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('hash', 'text', (c) => c.notNull().unique())
          .addColumn('created_at', 'text', (c) => c.notNull())
          .execute();
      },
    },
    '0005-hosts': {
      // Hosts of the fleet (issue 10) and where VMs, checkpoints and datastores live (their host's id).
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('hosts')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('url', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('state_reason', 'text')
          .addColumn('epoch', t.int64, (c) => c.notNull().defaultTo(0))
          .addColumn('token', 'text')
          .addColumn('protocol_version', t.int64, (c) => c.notNull())
          .addColumn('capabilities', 'text', (c) => c.notNull().defaultTo('[]'))
          .addColumn('facts', 'text')
          .addColumn('last_seen_at', 'text')
          .addColumn('lease_expires_at', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        for (const table of ['vms', 'checkpoints', 'datastores']) await db.schema.alterTable(table).addColumn('host', 'text').execute();
        await db.schema.createIndex('vms_host').on('vms').column('host').execute();
        // Files by reference (protocol locators) instead of host paths; datastores get ids and may be shared by hosts.
        await db.schema.alterTable('checkpoints').addColumn('file', 'text').execute();
        await db.schema.alterTable('datastores').addColumn('id', 'text').execute();
        await db.schema.alterTable('datastores').addColumn('hosts', 'text').execute();
      },
    },
    '0006-coordination': {
      // The engine over the fleet's coordination rows (issue 11): a task's cancel
      // request reaches the controller that runs it through its row.
      async up(db: Kysely<unknown>) {
        await db.schema.alterTable('tasks').addColumn('cancel_requested_at', t.int64).execute();
      },
      async down(db: Kysely<unknown>) {
        await db.schema.alterTable('tasks').dropColumn('cancel_requested_at').execute();
      },
    },
    '0007-fabric': {
      // The elastic fabric (issue 14): parent templates (a document each) and the children of their pools,
      // whose ready state moves by compare-and-set (one row per child, so a claim is one conditional update).
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('fabric_templates')
          .addColumn('id', 'text', (c) => c.primaryKey())
          .addColumn('name', 'text', (c) => c.notNull().unique())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('doc', 'text', (c) => c.notNull())
          .addColumn('version', t.int64, (c) => c.notNull().defaultTo(0))
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema
          .createTable('fabric_members')
          .addColumn('vm_id', 'text', (c) => c.primaryKey())
          .addColumn('template_id', 'text', (c) => c.notNull())
          .addColumn('host_id', 'text', (c) => c.notNull())
          .addColumn('state', 'text', (c) => c.notNull())
          .addColumn('state_reason', 'text')
          .addColumn('created_at', 'text', (c) => c.notNull())
          .addColumn('ready_at', 'text')
          .addColumn('claimed_at', 'text')
          .addColumn('claim_id', 'text')
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await db.schema.createIndex('fabric_members_pool').on('fabric_members').columns(['template_id', 'state', 'host_id']).execute();
      },
    },
    '0008-migration-policies': {
      // Live migration policies (issue 12): one policy document per scope (the fleet, or a host id), and the queue of
      // migrations waiting for a host's slot, in arrival order.
      async up(db: Kysely<unknown>) {
        await db.schema
          .createTable('migration_policies')
          .addColumn('scope', 'text', (c) => c.primaryKey())
          .addColumn('doc', 'text', (c) => c.notNull())
          .addColumn('updated_at', 'text', (c) => c.notNull())
          .execute();
        await t
          .serialKey(db.schema.createTable('migration_queue'), 'seq')
          .addColumn('task_id', 'text', (c) => c.notNull().unique())
          .addColumn('owner', 'text', (c) => c.notNull())
          .addColumn('needs', 'text', (c) => c.notNull())
          .addColumn('enqueued_at', 'text', (c) => c.notNull())
          .execute();
      },
    },
  };
}

/** The migrations this code knows, in order. */
export function migrationNames(dialect: StoreDialect): string[] {
  return Object.keys(migrationsFor(dialect)).sort();
}

export function migrationProvider(dialect: StoreDialect): MigrationProvider {
  return { getMigrations: async () => migrationsFor(dialect) };
  }
