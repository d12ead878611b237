// The inventory over a SQLite file (Kysely + better-sqlite3): implements the
// VM layer's Inventory interface, runs schema migrations on open, and maps a
// duplicate VM name to ALREADY_EXISTS. Its `storage` part holds datastores,
// disks, copy jobs and pools.
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { Kysely, Migrator, SqliteDialect } from 'kysely';
import type { Selectable } from 'kysely';
import { AlreadyExistsError, NotFoundError, OffshootError } from '../common/index.ts';
import type { CheckpointRecord, Inventory, TaskRecord, TaskState, VmRecord } from '../vm/index.ts';
import { isTaskState, isVmState } from '../vm/index.ts';
import { migrationProvider } from './migrations.ts';
import { isUniqueViolation } from './sqlite-errors.ts';
import { SqliteStorageInventory } from './storage-inventory.ts';
import type { CheckpointsTable, Database, TasksTable, VmsTable } from './schema.ts';

export class InventoryCorruptError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('INVENTORY_CORRUPT', message, details, 500);
  }
}

function vmFromRow(row: Selectable<VmsTable>): VmRecord {
  if (!isVmState(row.state)) throw new InventoryCorruptError(`VM ${row.id} has unknown state ${row.state}`, { id: row.id, state: row.state });
  return {
    id: row.id,
    name: row.name,
    state: row.state,
    stateReason: row.state_reason,
    spec: JSON.parse(row.spec) as VmRecord['spec'],
    runtime: row.runtime === null ? null : (JSON.parse(row.runtime) as VmRecord['runtime']),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function taskFromRow(row: Selectable<TasksTable>): TaskRecord {
  if (!isTaskState(row.state)) throw new InventoryCorruptError(`task ${row.id} has unknown state ${row.state}`, { id: row.id, state: row.state });
  return {
    id: row.id,
    kind: row.kind,
    targetId: row.target_id,
    targetName: row.target_name,
    state: row.state,
    progress: row.progress,
    message: row.message,
    result: row.result === null ? null : (JSON.parse(row.result) as unknown),
    error: row.error === null ? null : (JSON.parse(row.error) as TaskRecord['error']),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function checkpointFromRow(row: Selectable<CheckpointsTable>): CheckpointRecord {
  return {
    id: row.id,
    name: row.name,
    vmId: row.vm_id,
    vmName: row.vm_name,
    path: row.path,
    state: row.state as CheckpointRecord['state'],
    memoryBytes: row.memory_bytes,
    fileBytes: row.file_bytes,
    spec: JSON.parse(row.spec) as CheckpointRecord['spec'],
    createdAt: row.created_at,
  };
}

export class SqliteInventory implements Inventory {
  /** Datastores, disks, copy jobs and pools, in the same database. */
  readonly storage: SqliteStorageInventory;

  private constructor(private readonly db: Kysely<Database>) {
    this.storage = new SqliteStorageInventory(db);
  }

  /** Opens (creating if needed) the SQLite file and brings its schema up to date. */
  static async open(path: string): Promise<SqliteInventory> {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    const sqlite = new BetterSqlite3(path);
    sqlite.pragma('journal_mode = WAL');
    sqlite.pragma('busy_timeout = 5000');
    sqlite.pragma('foreign_keys = ON');
    const db = new Kysely<Database>({ dialect: new SqliteDialect({ database: sqlite }) });
    const { error, results } = await new Migrator({ db, provider: migrationProvider }).migrateToLatest();
    if (error) {
      await db.destroy();
      const failed = results?.find((r) => r.status === 'Error')?.migrationName;
      throw new OffshootError('INVENTORY_MIGRATION_FAILED', `cannot migrate the inventory at ${path}: ${(error as Error).message}`, { path, migration: failed }, 500, { cause: error });
    }
    return new SqliteInventory(db);
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }

  async insertVm(vm: VmRecord): Promise<void> {
    try {
      await this.db
        .insertInto('vms')
        .values({ id: vm.id, name: vm.name, state: vm.state, state_reason: vm.stateReason, spec: JSON.stringify(vm.spec), runtime: vm.runtime === null ? null : JSON.stringify(vm.runtime), created_at: vm.createdAt, updated_at: vm.updatedAt })
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError('VM', vm.name);
      throw err;
    }
  }

  async updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt'>>): Promise<VmRecord> {
    const values: Partial<VmsTable> = {};
    if (patch.name !== undefined) values.name = patch.name;
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.stateReason !== undefined) values.state_reason = patch.stateReason;
    if (patch.spec !== undefined) values.spec = JSON.stringify(patch.spec);
    if (patch.runtime !== undefined) values.runtime = patch.runtime === null ? null : JSON.stringify(patch.runtime);
    values.updated_at = patch.updatedAt ?? new Date().toISOString();
    const row = await this.db.updateTable('vms').set(values).where('id', '=', id).returningAll().executeTakeFirst();
    if (!row) throw new NotFoundError('VM', id);
    return vmFromRow(row);
  }

  async deleteVm(id: string): Promise<void> {
    await this.db.deleteFrom('vms').where('id', '=', id).execute();
  }

  async getVm(id: string): Promise<VmRecord | undefined> {
    const row = await this.db.selectFrom('vms').selectAll().where('id', '=', id).executeTakeFirst();
    return row && vmFromRow(row);
  }

  async findVmByName(name: string): Promise<VmRecord | undefined> {
    const row = await this.db.selectFrom('vms').selectAll().where('name', '=', name).executeTakeFirst();
    return row && vmFromRow(row);
  }

  async listVms(): Promise<VmRecord[]> {
    const rows = await this.db.selectFrom('vms').selectAll().orderBy('created_at').orderBy('name').execute();
    return rows.map(vmFromRow);
  }

  async insertTask(task: TaskRecord): Promise<void> {
    await this.db
      .insertInto('tasks')
      .values({ id: task.id, kind: task.kind, target_id: task.targetId, target_name: task.targetName, state: task.state, progress: task.progress, message: task.message, result: task.result === null ? null : JSON.stringify(task.result), error: task.error === null ? null : JSON.stringify(task.error), created_at: task.createdAt, updated_at: task.updatedAt })
      .execute();
  }

  async updateTask(id: string, patch: Partial<Omit<TaskRecord, 'id' | 'createdAt'>>): Promise<TaskRecord> {
    const values: Partial<Omit<TasksTable, 'seq'>> = {};
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.progress !== undefined) values.progress = patch.progress;
    if (patch.message !== undefined) values.message = patch.message;
    if (patch.result !== undefined) values.result = patch.result === null ? null : JSON.stringify(patch.result);
    if (patch.error !== undefined) values.error = patch.error === null ? null : JSON.stringify(patch.error);
    values.updated_at = patch.updatedAt ?? new Date().toISOString();
    const row = await this.db.updateTable('tasks').set(values).where('id', '=', id).returningAll().executeTakeFirst();
    if (!row) throw new NotFoundError('task', id);
    return taskFromRow(row);
  }

  async getTask(id: string): Promise<TaskRecord | undefined> {
    const row = await this.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
    return row && taskFromRow(row);
  }

  async insertCheckpoint(c: CheckpointRecord): Promise<void> {
    try {
      await this.db
        .insertInto('checkpoints')
        .values({ id: c.id, name: c.name, vm_id: c.vmId, vm_name: c.vmName, path: c.path, state: c.state, memory_bytes: c.memoryBytes, file_bytes: c.fileBytes, spec: JSON.stringify(c.spec), created_at: c.createdAt })
        .execute();
    } catch (err) {
      if (isUniqueViolation(err)) throw new AlreadyExistsError('checkpoint', c.name);
      throw err;
    }
  }

  async updateCheckpoint(id: string, patch: Partial<Pick<CheckpointRecord, 'state' | 'fileBytes'>>): Promise<CheckpointRecord> {
    const values: Partial<CheckpointsTable> = {};
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.fileBytes !== undefined) values.file_bytes = patch.fileBytes;
    const row = await this.db.updateTable('checkpoints').set(values).where('id', '=', id).returningAll().executeTakeFirst();
    if (!row) throw new NotFoundError('checkpoint', id);
    return checkpointFromRow(row);
  }

  async deleteCheckpoint(id: string): Promise<void> {
    await this.db.deleteFrom('checkpoints').where('id', '=', id).execute();
  }

  async findCheckpoint(ref: string): Promise<CheckpointRecord | undefined> {
    const row = await this.db.selectFrom('checkpoints').selectAll().where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref), eb('path', '=', ref)])).executeTakeFirst();
    return row && checkpointFromRow(row);
  }

  async listCheckpoints(): Promise<CheckpointRecord[]> {
    return (await this.db.selectFrom('checkpoints').selectAll().orderBy('created_at').execute()).map(checkpointFromRow);
  }

  async listTasks(options: { limit?: number; targetId?: string; state?: TaskState } = {}): Promise<TaskRecord[]> {
    let query = this.db.selectFrom('tasks').selectAll().orderBy('seq', 'desc');
    if (options.limit !== undefined) query = query.limit(options.limit);
    if (options.targetId) query = query.where('target_id', '=', options.targetId);
    if (options.state) query = query.where('state', '=', options.state);
    return (await query.execute()).map(taskFromRow);
  }
}
