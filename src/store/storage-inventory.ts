// The storage half of the inventory: datastores and disks as rows, copy jobs
// and pools as JSON documents. Implements the VM layer's StorageInventory over
// the same Kysely database as the VM inventory, on SQLite or PostgreSQL.
// Read-modify-write updates run in a transaction that locks the row on
// PostgreSQL (SQLite's write transaction excludes other writers already), so
// two controllers updating one record do not lose each other's change.
import type { Kysely, Selectable } from 'kysely';
import { AlreadyExistsError, NotFoundError } from '../common/index.ts';
import type { CopyJobRecord, DatastoreRecord, DiskRecord, PoolRecord, StorageInventory } from '../vm/index.ts';
import type { StoreDialect } from './dialect.ts';
import type { DatastoresTable, Database, DisksTable } from './schema.ts';

function datastoreFromRow(row: Selectable<DatastoresTable>): DatastoreRecord {
  // Rows from before hosts have no id and hosts: the daemon upgrades them at start (ids from their name until then).
  return { id: row.id ?? row.name.toLowerCase().replace(/[^a-z0-9-]/g, '-'), name: row.name, hosts: row.hosts ? (JSON.parse(row.hosts) as DatastoreRecord['hosts']) : row.host ? [{ hostId: row.host, path: row.path }] : [{ hostId: '', path: row.path }], createdAt: row.created_at };
}

function diskFromRow(row: Selectable<DisksTable>): DiskRecord {
  return {
    id: row.id,
    name: row.name,
    datastore: row.datastore,
    file: row.path,
    format: row.format as DiskRecord['format'],
    contentId: row.content_id,
    parentId: row.parent_id,
    virtualSize: row.virtual_size,
    readOnly: row.read_only !== 0,
    createdAt: row.created_at,
  };
}

function diskToRow(d: DiskRecord): DisksTable {
  return { id: d.id, name: d.name, datastore: d.datastore, path: d.file, format: d.format, content_id: d.contentId, parent_id: d.parentId, virtual_size: d.virtualSize, read_only: d.readOnly ? 1 : 0, created_at: d.createdAt };
}

export class KyselyStorageInventory implements StorageInventory {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async insertDatastore(ds: DatastoreRecord): Promise<void> {
    try {
      const first = ds.hosts[0];
      await this.db.insertInto('datastores').values({ name: ds.name, id: ds.id, path: `${first?.hostId ?? ''}:${first?.path ?? ''}`, host: first?.hostId ?? null, hosts: JSON.stringify(ds.hosts), created_at: ds.createdAt }).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('datastore', `${ds.name} (${ds.hosts[0]?.path ?? ''})`);
      throw err;
    }
  }

  async deleteDatastore(name: string): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('disks').where('datastore', '=', name).execute();
      await trx.deleteFrom('datastores').where('name', '=', name).execute();
    });
  }

  async getDatastore(name: string): Promise<DatastoreRecord | undefined> {
    const row = await this.db.selectFrom('datastores').selectAll().where('name', '=', name).executeTakeFirst();
    return row && datastoreFromRow(row);
  }

  async listDatastores(): Promise<DatastoreRecord[]> {
    return (await this.db.selectFrom('datastores').selectAll().orderBy(this.dialect.byBytes('name')).execute()).map(datastoreFromRow);
  }

  async updateDatastore(name: string, patch: Partial<Pick<DatastoreRecord, 'hosts' | 'id'>>): Promise<DatastoreRecord> {
    const values: Partial<DatastoresTable> = {};
    if (patch.hosts !== undefined) {
      values.hosts = JSON.stringify(patch.hosts);
      values.host = patch.hosts[0]?.hostId ?? null;
    }
    if (patch.id !== undefined) values.id = patch.id;
    const row = Object.keys(values).length ? await this.db.updateTable('datastores').set(values).where('name', '=', name).returningAll().executeTakeFirst() : await this.db.selectFrom('datastores').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw new NotFoundError('datastore', name);
    return datastoreFromRow(row);
  }

  async insertDisk(disk: DiskRecord): Promise<void> {
    try {
      await this.db.insertInto('disks').values(diskToRow(disk)).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('disk', `${disk.datastore}/${disk.name}`);
      throw err;
    }
  }

  async updateDisk(id: string, patch: Partial<Omit<DiskRecord, 'id'>>): Promise<DiskRecord> {
    return this.db.transaction().execute(async (trx) => {
      const found = await this.dialect.lockRows(trx.selectFrom('disks').selectAll().where('id', '=', id), 'wait').executeTakeFirst();
      if (!found) throw new NotFoundError('disk', id);
      const next = { ...diskFromRow(found), ...patch, id };
      const { id: _id, ...row } = diskToRow(next);
      await trx.updateTable('disks').set(row).where('id', '=', id).execute();
      return next;
    });
  }

  async deleteDisk(id: string): Promise<void> {
    await this.db.deleteFrom('disks').where('id', '=', id).execute();
  }

  async getDisk(id: string): Promise<DiskRecord | undefined> {
    const row = await this.db.selectFrom('disks').selectAll().where('id', '=', id).executeTakeFirst();
    return row && diskFromRow(row);
  }

  async listDisks(datastore?: string): Promise<DiskRecord[]> {
    let query = this.db.selectFrom('disks').selectAll().orderBy(this.dialect.byBytes('datastore')).orderBy(this.dialect.byBytes('created_at'));
    if (datastore) query = query.where('datastore', '=', datastore);
    return (await query.execute()).map(diskFromRow);
  }

  async replaceDisks(datastore: string, disks: DiskRecord[]): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      await trx.deleteFrom('disks').where('datastore', '=', datastore).execute();
      for (const disk of disks) await trx.insertInto('disks').values(diskToRow(disk)).execute();
    });
  }

  async insertCopyJob(job: CopyJobRecord): Promise<void> {
    await this.db.insertInto('copy_jobs').values({ id: job.id, name: null, doc: JSON.stringify(job), created_at: job.createdAt }).execute();
  }

  async updateCopyJob(id: string, patch: Partial<Omit<CopyJobRecord, 'id' | 'createdAt'>>): Promise<CopyJobRecord> {
    return this.db.transaction().execute(async (trx) => {
      const found = await this.dialect.lockRows(trx.selectFrom('copy_jobs').select('doc').where('id', '=', id), 'wait').executeTakeFirst();
      if (!found) throw new NotFoundError('copy job', id);
      const next: CopyJobRecord = { ...(JSON.parse(found.doc) as CopyJobRecord), ...patch, updatedAt: patch.updatedAt ?? new Date().toISOString() };
      await trx.updateTable('copy_jobs').set({ doc: JSON.stringify(next) }).where('id', '=', id).execute();
      return next;
    });
  }

  async getCopyJob(id: string): Promise<CopyJobRecord | undefined> {
    const row = await this.db.selectFrom('copy_jobs').select('doc').where('id', '=', id).executeTakeFirst();
    return row && (JSON.parse(row.doc) as CopyJobRecord);
  }

  async listCopyJobs(): Promise<CopyJobRecord[]> {
    return (await this.db.selectFrom('copy_jobs').select('doc').orderBy(this.dialect.byBytes('created_at')).execute()).map((r) => JSON.parse(r.doc) as CopyJobRecord);
  }

  async insertPool(pool: PoolRecord): Promise<void> {
    await this.db.transaction().execute(async (trx) => {
      // A pool's name is unique, but the released schema has no constraint on it: check inside the write transaction.
      const taken = await trx.selectFrom('pools').select('id').where((eb) => eb.or([eb('id', '=', pool.name), eb('name', '=', pool.name)])).executeTakeFirst();
      if (taken) throw new AlreadyExistsError('pool', pool.name);
      await trx.insertInto('pools').values({ id: pool.id, name: pool.name, doc: JSON.stringify(pool), created_at: pool.createdAt }).execute();
    });
  }

  async updatePool(id: string, patch: Partial<Omit<PoolRecord, 'id' | 'createdAt'>>): Promise<PoolRecord> {
    return this.db.transaction().execute(async (trx) => {
      const found = await this.dialect.lockRows(trx.selectFrom('pools').select('doc').where('id', '=', id), 'wait').executeTakeFirst();
      if (!found) throw new NotFoundError('pool', id);
      const next: PoolRecord = { ...(JSON.parse(found.doc) as PoolRecord), ...patch, updatedAt: patch.updatedAt ?? new Date().toISOString() };
      await trx.updateTable('pools').set({ doc: JSON.stringify(next), name: next.name }).where('id', '=', id).execute();
      return next;
    });
  }

  async deletePool(id: string): Promise<void> {
    await this.db.deleteFrom('pools').where('id', '=', id).execute();
  }

  async getPool(ref: string): Promise<PoolRecord | undefined> {
    const row = await this.db.selectFrom('pools').select('doc').where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)])).executeTakeFirst();
    return row && (JSON.parse(row.doc) as PoolRecord);
  }

  async listPools(): Promise<PoolRecord[]> {
    return (await this.db.selectFrom('pools').select('doc').orderBy(this.dialect.byBytes('created_at')).execute()).map((r) => JSON.parse(r.doc) as PoolRecord);
  }
}
