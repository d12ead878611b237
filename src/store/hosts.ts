// Hosts of the fleet (table hosts, issue 10), kept minimal until the
// control plane drives remote agents: a name, the agent's URL, a state, an
// epoch that every request to the agent carries (bumped atomically when the
// control plane takes the host over, so an agent refuses a stale one), a
// lease, and the agent's capabilities as JSON. VMs, checkpoints and
// datastores have a nullable `host` column naming their host.
import type { Kysely, Selectable } from 'kysely';
import { AlreadyExistsError, NotFoundError } from '../common/index.ts';
import type { StoreDialect } from './dialect.ts';
import type { Database, HostsTable } from './schema.ts';

export interface HostRecord {
  name: string;
  url: string;
  state: string;
  epoch: number;
  leaseExpiresAt: number | null;
  capabilities: Record<string, unknown>;
  createdAt: string;
}

function hostFromRow(row: Selectable<HostsTable>): HostRecord {
  return { name: row.name, url: row.url, state: row.state, epoch: row.epoch, leaseExpiresAt: row.lease_expires_at, capabilities: JSON.parse(row.capabilities) as Record<string, unknown>, createdAt: row.created_at };
}

export class KyselyHosts {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async insert(host: HostRecord): Promise<void> {
    try {
      await this.db.insertInto('hosts').values({ name: host.name, url: host.url, state: host.state, epoch: host.epoch, lease_expires_at: host.leaseExpiresAt, capabilities: JSON.stringify(host.capabilities), created_at: host.createdAt }).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('host', host.name);
      throw err;
    }
  }

  async update(name: string, patch: Partial<Pick<HostRecord, 'url' | 'state' | 'leaseExpiresAt' | 'capabilities'>>): Promise<HostRecord> {
    const values: Partial<HostsTable> = {};
    if (patch.url !== undefined) values.url = patch.url;
    if (patch.state !== undefined) values.state = patch.state;
    if (patch.leaseExpiresAt !== undefined) values.lease_expires_at = patch.leaseExpiresAt;
    if (patch.capabilities !== undefined) values.capabilities = JSON.stringify(patch.capabilities);
    const row = Object.keys(values).length > 0 ? await this.db.updateTable('hosts').set(values).where('name', '=', name).returningAll().executeTakeFirst() : await this.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw new NotFoundError('host', name);
    return hostFromRow(row);
  }

  /** Adds one to the host's epoch in one statement and returns the host with it. */
  async bumpEpoch(name: string): Promise<HostRecord> {
    const row = await this.db
      .updateTable('hosts')
      .set((eb) => ({ epoch: eb('epoch', '+', 1) }))
      .where('name', '=', name)
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new NotFoundError('host', name);
    return hostFromRow(row);
  }

  async get(name: string): Promise<HostRecord | undefined> {
    const row = await this.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    return row && hostFromRow(row);
  }

  async list(): Promise<HostRecord[]> {
    return (await this.db.selectFrom('hosts').selectAll().orderBy(this.dialect.byBytes('name')).execute()).map(hostFromRow);
  }

  async delete(name: string): Promise<void> {
    await this.db.deleteFrom('hosts').where('name', '=', name).execute();
  }
}
