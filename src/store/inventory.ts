// The inventory: one class over SQLite (the embedded default, one controller)
// and PostgreSQL (a fleet of controllers), through the same Kysely code; what
// differs between the two is in dialect.ts and connect.ts. It implements the
// VM layer's Inventory (VMs, tasks, checkpoints) and carries the rest of the
// schema as parts: `storage` (datastores, disks, copy jobs, pools) and the
// fleet's coordination (`claims`, `pins`, `leases`, `controllers`, `tokens`,
// `hosts`, and event buses from openEventBus), the elastic fabric (`fabric`) and live migration policies
// and queue (`migrationControl`). Opening checks the schema
// version and migrates or refuses (schema-version.ts). VM updates bump the
// VM's version and take an optional compare-and-set (`expectVersion`).
import type { Kysely } from 'kysely';
import { AlreadyExistsError, NotFoundError } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { CheckpointRecord, InsertTaskOptions, Inventory, SharedEventBus, TaskRecord, TaskState, UpdateTaskOptions, UpdateVmOptions, VmRecord } from '../vm/index.ts';
import { LeaseLostError, VersionConflictError } from '../vm/index.ts';
import { KyselyVmClaims } from './claims.ts';
import { expiryAfter, systemClock } from './clock.ts';
import type { Clock } from './clock.ts';
import { connect } from './connect.ts';
import type { DatabaseHandle } from './connect.ts';
import { KyselyControllers } from './controllers.ts';
import type { DialectName, StoreDialect } from './dialect.ts';
import { InventoryUnavailableError } from './errors.ts';
import { InProcessEventBus, PgNotifyEventBus } from './event-bus.ts';
import { KyselyFabricInventory } from './fabric-inventory.ts';
import { KyselyHosts } from './hosts.ts';
import { KyselyMigrationControl } from './migration-policies.ts';
import { KyselyGcPins } from './pins.ts';
import { checkpointFromRow, taskFromRow, vmFromRow } from './rows.ts';
import { prepareSchema } from './schema-version.ts';
import type { MigratePolicy, SchemaVersion } from './schema-version.ts';
import type { CheckpointsTable, Database, TasksTable, VmsTable } from './schema.ts';
import { KyselyStorageInventory } from './storage-inventory.ts';
import { KyselyTaskLeases } from './task-leases.ts';
import { KyselyApiTokens } from './tokens.ts';

export interface OpenInventoryOptions {
  /** Lease and claim times; default the system clock. */
  clock?: Clock;
  logger?: Logger;
  /** When the database's schema is older than this code: default 'always' on SQLite, 'unless-live' on PostgreSQL. */
  migrate?: MigratePolicy;
  /** PostgreSQL connections (default 10). */
  poolSize?: number;
  /** SQLite: refuse (NOT_FOUND) instead of creating a missing file. */
  mustExist?: boolean;
}

/** A bus from openEventBus: shared, and tells when it missed events. */
export type InventoryEventBus<E> = SharedEventBus<E> & {
  /** Called when the bus is connected again after an outage, during which it missed events. */
  onReconnect(listener: () => void): () => void;
  /** Whether events from other controllers can reach it now. */
  readonly listening: boolean;
};

export class KyselyInventory implements Inventory {
  readonly storage: KyselyStorageInventory;
  readonly claims: KyselyVmClaims;
  readonly pins: KyselyGcPins;
  readonly leases: KyselyTaskLeases;
  readonly controllers: KyselyControllers;
  readonly tokens: KyselyApiTokens;
  readonly hosts: KyselyHosts;
  /** The elastic fabric: templates and the children of their pools. */
  readonly fabric: KyselyFabricInventory;
  /** Live migration policies and the queue of migrations waiting for a host's slot. */
  readonly migrationControl: KyselyMigrationControl;
  /** What differs between SQLite and PostgreSQL. */
  readonly dialect: StoreDialect;
  private readonly db: Kysely<Database>;
  private readonly buses = new Set<InventoryEventBus<unknown>>();

  private constructor(
    private readonly handle: DatabaseHandle,
    readonly schema: SchemaVersion,
    private readonly clock: Clock,
    private readonly logger: Logger | undefined,
  ) {
    this.db = handle.db;
    this.dialect = handle.dialect;
    this.storage = new KyselyStorageInventory(this.db, this.dialect);
    this.claims = new KyselyVmClaims(this.db, clock);
    this.pins = new KyselyGcPins(this.db, this.dialect);
    this.leases = new KyselyTaskLeases(this.db, this.dialect, clock);
    this.controllers = new KyselyControllers(this.db, this.dialect, clock);
    this.tokens = new KyselyApiTokens(this.db, this.dialect);
    this.hosts = new KyselyHosts(this.db, this.dialect);
    this.fabric = new KyselyFabricInventory(this.db, this.dialect);
    this.migrationControl = new KyselyMigrationControl(this.db);
  }

  /** Opens the inventory at a PostgreSQL URL or a SQLite file path, bringing its schema up to date (or refusing). */
  static async open(location: string, options: OpenInventoryOptions = {}): Promise<KyselyInventory> {
    const handle = await connect(location, { logger: options.logger, poolSize: options.poolSize, mustExist: options.mustExist });
    const clock = options.clock ?? systemClock;
    const policy = options.migrate ?? (handle.dialect.name === 'sqlite' ? 'always' : 'unless-live');
    try {
      const schema = await prepareSchema(handle.db, handle.dialect, handle.location.display, policy, clock());
      return new KyselyInventory(handle, schema, clock, options.logger);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** 'sqlite' or 'postgres'. */
  get dialectName(): DialectName {
    return this.dialect.name;
  }

  /** Where the database is, any password hidden. */
  get location(): string {
    return this.handle.location.display;
  }

  /** The Kysely instance, for export/import and tests. */
  get kysely(): Kysely<Database> {
    return this.db;
  }

  /** An event bus that reaches every controller on this inventory; `origin` identifies this controller's bus. */
  async openEventBus<E>(origin: string): Promise<InventoryEventBus<E>> {
    const bus: InventoryEventBus<E> =
      this.dialect.name === 'postgres'
        ? await PgNotifyEventBus.open<E>(origin, this.db, this.handle.pgClientConfig as object, this.clock, this.logger, (err) => {
            const reason = this.dialect.unavailableReason(err);
            return reason === undefined ? err : new InventoryUnavailableError(this.dialect.name, reason, { cause: err });
          })
        : new InProcessEventBus<E>(this.handle.location.target, this.logger);
    this.buses.add(bus as InventoryEventBus<unknown>);
    const close = bus.close.bind(bus);
    bus.close = async () => {
      this.buses.delete(bus as InventoryEventBus<unknown>);
      await close();
    };
    return bus;
  }

  async close(): Promise<void> {
    for (const bus of [...this.buses]) await bus.close();
    await this.handle.close();
  }

  async insertVm(vm: VmRecord): Promise<void> {
    try {
      await this.db
        .insertInto('vms')
        .values({ id: vm.id, name: vm.name, state: vm.state, state_reason: vm.stateReason, host: vm.hostId, spec: JSON.stringify(vm.spec), runtime: vm.runtime === null ? null : JSON.stringify(vm.runtime), created_at: vm.createdAt, updated_at: vm.updatedAt, version: vm.version ?? 0 })
        .execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('VM', vm.name);
      throw err;
    }
  }

  async updateVm(id: string, patch: Partial<Omit<VmRecord, 'id' | 'createdAt' | 'version'>>, options: UpdateVmOptions = {}): Promise<VmRecord> {
    const values: Partial<Omit<VmsTable, 'version'>> = {};
    if (patch.name !== undefined) values.name = patch.name;
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.stateReason !== undefined) values.state_reason = patch.stateReason;
    if (patch.hostId !== undefined) values.host = patch.hostId;
    if (patch.spec !== undefined) values.spec = JSON.stringify(patch.spec);
    if (patch.runtime !== undefined) values.runtime = patch.runtime === null ? null : JSON.stringify(patch.runtime);
    values.updated_at = patch.updatedAt ?? new Date().toISOString();
    let query = this.db
      .updateTable('vms')
      .set((eb) => ({ ...values, version: eb('version', '+', 1) }))
      .where('id', '=', id);
    if (options.expectVersion !== undefined) query = query.where('version', '=', options.expectVersion);
    let row;
    try {
      row = await query.returningAll().executeTakeFirst();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('VM', patch.name ?? id);
      throw err;
    }
    if (row) return vmFromRow(row);
    const current = await this.db.selectFrom('vms').select('version').where('id', '=', id).executeTakeFirst();
    if (!current) throw new NotFoundError('VM', id);
    throw new VersionConflictError('VM', id, options.expectVersion as number, current.version);
  }

  async deleteVm(id: string, options: UpdateVmOptions = {}): Promise<void> {
    let query = this.db.deleteFrom('vms').where('id', '=', id);
    if (options.expectVersion !== undefined) query = query.where('version', '=', options.expectVersion);
    const result = await query.executeTakeFirst();
    if (options.expectVersion === undefined || Number(result.numDeletedRows) > 0) return;
    const current = await this.db.selectFrom('vms').select('version').where('id', '=', id).executeTakeFirst();
    if (current) throw new VersionConflictError('VM', id, options.expectVersion, current.version);
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
    const rows = await this.db.selectFrom('vms').selectAll().orderBy(this.dialect.byBytes('created_at')).orderBy(this.dialect.byBytes('name')).execute();
    return rows.map(vmFromRow);
  }

  async insertTask(task: TaskRecord, options: InsertTaskOptions = {}): Promise<void> {
    const lease = options.lease ? { owner: options.lease.owner, lease_expires_at: expiryAfter(this.clock, options.lease.ttlMs).expiresAt } : {};
    try {
      await this.db
        .insertInto('tasks')
        .values({ id: task.id, kind: task.kind, target_id: task.targetId, target_name: task.targetName, state: task.state, progress: task.progress, message: task.message, result: task.result === null ? null : JSON.stringify(task.result), error: task.error === null ? null : JSON.stringify(task.error), created_at: task.createdAt, updated_at: task.updatedAt, ...lease })
        .execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('task', task.id);
      throw err;
    }
  }

  async updateTask(id: string, patch: Partial<Omit<TaskRecord, 'id' | 'createdAt'>>, options: UpdateTaskOptions = {}): Promise<TaskRecord> {
    const values: Partial<Omit<TasksTable, 'seq'>> = {};
    if (patch.state !== undefined) values.state = patch.state;
    // A task that ends gives up its lease (its owner stays, as a record of who ran it last).
    if (patch.state !== undefined && patch.state !== 'running') values.lease_expires_at = null;
    if (patch.progress !== undefined) values.progress = patch.progress;
    if (patch.message !== undefined) values.message = patch.message;
    if (patch.result !== undefined) values.result = patch.result === null ? null : JSON.stringify(patch.result);
    if (patch.error !== undefined) values.error = patch.error === null ? null : JSON.stringify(patch.error);
    values.updated_at = patch.updatedAt ?? new Date().toISOString();
    let query = this.db.updateTable('tasks').set(values).where('id', '=', id);
    if (options.owner !== undefined) query = query.where('owner', '=', options.owner);
    const row = await query.returningAll().executeTakeFirst();
    if (row) return taskFromRow(row);
    const current = await this.db.selectFrom('tasks').select('owner').where('id', '=', id).executeTakeFirst();
    if (!current) throw new NotFoundError('task', id);
    throw new LeaseLostError('lease', id, options.owner as string, current.owner);
  }

  async getTask(id: string): Promise<TaskRecord | undefined> {
    const row = await this.db.selectFrom('tasks').selectAll().where('id', '=', id).executeTakeFirst();
    return row && taskFromRow(row);
  }

  async listTasks(options: { limit?: number; targetId?: string; state?: TaskState } = {}): Promise<TaskRecord[]> {
    let query = this.db.selectFrom('tasks').selectAll().orderBy('seq', 'desc');
    if (options.limit !== undefined) query = query.limit(options.limit);
    if (options.targetId) query = query.where('target_id', '=', options.targetId);
    if (options.state) query = query.where('state', '=', options.state);
    return (await query.execute()).map(taskFromRow);
  }

  async insertCheckpoint(c: CheckpointRecord): Promise<void> {
    try {
      await this.db
        .insertInto('checkpoints')
        .values({ id: c.id, name: c.name, vm_id: c.vmId, vm_name: c.vmName, host: c.hostId, file: c.file, path: c.path, state: c.state, memory_bytes: c.memoryBytes, file_bytes: c.fileBytes, spec: JSON.stringify(c.spec), created_at: c.createdAt })
        .execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('checkpoint', c.name);
      throw err;
    }
  }

  async updateCheckpoint(id: string, patch: Partial<Pick<CheckpointRecord, 'state' | 'fileBytes' | 'hostId' | 'file' | 'spec'>>): Promise<CheckpointRecord> {
    const values: Partial<CheckpointsTable> = {};
    if (patch.hostId !== undefined) values.host = patch.hostId;
    if (patch.file !== undefined) values.file = patch.file;
    if (patch.spec !== undefined) values.spec = JSON.stringify(patch.spec);
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.fileBytes !== undefined) values.file_bytes = patch.fileBytes;
    const row = Object.keys(values).length > 0 ? await this.db.updateTable('checkpoints').set(values).where('id', '=', id).returningAll().executeTakeFirst() : await this.db.selectFrom('checkpoints').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NotFoundError('checkpoint', id);
    return checkpointFromRow(row);
  }

  async deleteCheckpoint(id: string): Promise<void> {
    await this.db.deleteFrom('checkpoints').where('id', '=', id).execute();
  }

  async findCheckpoint(ref: string): Promise<CheckpointRecord | undefined> {
    const row = await this.db
      .selectFrom('checkpoints')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref), eb('path', '=', ref)]))
      .executeTakeFirst();
    return row && checkpointFromRow(row);
  }

  async listCheckpoints(): Promise<CheckpointRecord[]> {
    return (await this.db.selectFrom('checkpoints').selectAll().orderBy(this.dialect.byBytes('created_at')).orderBy(this.dialect.byBytes('name')).execute()).map(checkpointFromRow);
  }
}
