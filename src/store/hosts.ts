// Hosts of the fleet (table hosts, issue 10): the control plane's records of
// the hosts it drives, implementing the VM layer's HostInventory. A host's
// epoch is written by the controller that takes the host over (see
// vm/hosts/fleet.ts); the agent refuses requests from an older one.
import type { Kysely, Selectable } from 'kysely';
import { AlreadyExistsError, NotFoundError } from '../common/index.ts';
import type { HostFacts, HostInventory, HostRecord } from '../vm/index.ts';
import { isHostState } from '../vm/index.ts';
import type { StoreDialect } from './dialect.ts';
import type { Database, HostsTable } from './schema.ts';

function hostFromRow(row: Selectable<HostsTable>): HostRecord {
  return {
    id: row.id,
    name: row.name,
    url: row.url,
    state: isHostState(row.state) ? row.state : 'unreachable',
    stateReason: row.state_reason,
    epoch: Number(row.epoch),
    token: row.token,
    protocolVersion: Number(row.protocol_version),
    capabilities: JSON.parse(row.capabilities) as string[],
    facts: row.facts ? (JSON.parse(row.facts) as HostFacts) : null,
    lastSeenAt: row.last_seen_at,
    leaseExpiresAt: row.lease_expires_at,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function rowFromPatch(patch: Partial<HostRecord>): Partial<HostsTable> {
  const row: Partial<HostsTable> = {};
  if (patch.id !== undefined) row.id = patch.id;
  if (patch.name !== undefined) row.name = patch.name;
  if (patch.url !== undefined) row.url = patch.url;
  if (patch.state !== undefined) row.state = patch.state;
  if (patch.stateReason !== undefined) row.state_reason = patch.stateReason;
  if (patch.epoch !== undefined) row.epoch = patch.epoch;
  if (patch.token !== undefined) row.token = patch.token;
  if (patch.protocolVersion !== undefined) row.protocol_version = patch.protocolVersion;
  if (patch.capabilities !== undefined) row.capabilities = JSON.stringify(patch.capabilities);
  if (patch.facts !== undefined) row.facts = patch.facts === null ? null : JSON.stringify(patch.facts);
  if (patch.lastSeenAt !== undefined) row.last_seen_at = patch.lastSeenAt;
  if (patch.leaseExpiresAt !== undefined) row.lease_expires_at = patch.leaseExpiresAt;
  if (patch.createdAt !== undefined) row.created_at = patch.createdAt;
  if (patch.updatedAt !== undefined) row.updated_at = patch.updatedAt;
  return row;
}

export class KyselyHosts implements HostInventory {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async insertHost(host: HostRecord): Promise<void> {
    try {
      await this.db.insertInto('hosts').values(rowFromPatch(host) as HostsTable).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('host', host.name);
      throw err;
    }
  }

  async updateHost(id: string, patch: Partial<Omit<HostRecord, 'id' | 'createdAt'>>): Promise<HostRecord> {
    const values = rowFromPatch(patch);
    const row = Object.keys(values).length > 0 ? await this.db.updateTable('hosts').set(values).where('id', '=', id).returningAll().executeTakeFirst() : await this.db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst();
    if (!row) throw new NotFoundError('host', id);
    return hostFromRow(row);
  }

  async deleteHost(id: string): Promise<void> {
    await this.db.deleteFrom('hosts').where('id', '=', id).execute();
  }

  async getHost(id: string): Promise<HostRecord | undefined> {
    const row = await this.db.selectFrom('hosts').selectAll().where('id', '=', id).executeTakeFirst();
    return row && hostFromRow(row);
  }

  async findHostByName(name: string): Promise<HostRecord | undefined> {
    const row = await this.db.selectFrom('hosts').selectAll().where('name', '=', name).executeTakeFirst();
    return row && hostFromRow(row);
  }

  async listHosts(): Promise<HostRecord[]> {
    return (await this.db.selectFrom('hosts').selectAll().orderBy(this.dialect.byBytes('name')).execute()).map(hostFromRow);
  }
}
