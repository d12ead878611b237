// The elastic fabric in the inventory (tables fabric_templates and
// fabric_members), implementing the VM layer's FabricInventory on SQLite and
// PostgreSQL. A template is a JSON document with its name (unique), state and
// version as columns; updates are read-modify-write in a transaction that
// locks the row on PostgreSQL (SQLite's write transactions exclude each
// other). A pool child is a row whose state moves only by compare-and-set
// (`update ... where state in (...)`), and a claim takes the oldest ready
// child in one statement (`update ... where vm_id = (select ... limit 1)
// and state = 'ready'`): on PostgreSQL the subquery locks the row it picks,
// skipping rows another claim holds, so concurrent claims on several
// controllers each take a different child instead of queueing on one; on
// SQLite the statement is atomic. Either way the conditional update is what
// makes a child go to exactly one claim.
import type { Kysely, Selectable } from 'kysely';
import { AlreadyExistsError, NotFoundError } from '../common/index.ts';
import type { FabricInventory, MemberState, PoolMember, TemplateRecord } from '../vm/index.ts';
import { isMemberState, isTemplateState } from '../vm/index.ts';
import type { StoreDialect } from './dialect.ts';
import { InventoryCorruptError } from './errors.ts';
import type { Database, FabricMembersTable, FabricTemplatesTable } from './schema.ts';

function templateFromRow(row: Selectable<FabricTemplatesTable>): TemplateRecord {
  if (!isTemplateState(row.state)) throw new InventoryCorruptError(`template ${row.id} has unknown state ${row.state}`, { id: row.id, state: row.state });
  const doc = JSON.parse(row.doc) as TemplateRecord;
  return { ...doc, id: row.id, name: row.name, state: row.state, createdAt: row.created_at, updatedAt: row.updated_at, version: Number(row.version) };
}

function memberFromRow(row: Selectable<FabricMembersTable>): PoolMember {
  if (!isMemberState(row.state)) throw new InventoryCorruptError(`pool child ${row.vm_id} has unknown state ${row.state}`, { id: row.vm_id, state: row.state });
  return { vmId: row.vm_id, templateId: row.template_id, hostId: row.host_id, state: row.state, stateReason: row.state_reason, createdAt: row.created_at, readyAt: row.ready_at, claimedAt: row.claimed_at, claimId: row.claim_id, updatedAt: row.updated_at };
}

function docOf(t: TemplateRecord): string {
  const { version: _version, ...doc } = t;
  return JSON.stringify(doc);
}

export class KyselyFabricInventory implements FabricInventory {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: StoreDialect,
  ) {}

  async insertTemplate(t: TemplateRecord): Promise<void> {
    try {
      await this.db.insertInto('fabric_templates').values({ id: t.id, name: t.name, state: t.state, doc: docOf(t), version: t.version ?? 0, created_at: t.createdAt, updated_at: t.updatedAt }).execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('template', t.name);
      throw err;
    }
  }

  async getTemplate(id: string): Promise<TemplateRecord | undefined> {
    const row = await this.db.selectFrom('fabric_templates').selectAll().where('id', '=', id).executeTakeFirst();
    return row && templateFromRow(row);
  }

  async findTemplate(ref: string): Promise<TemplateRecord | undefined> {
    const row = await this.db
      .selectFrom('fabric_templates')
      .selectAll()
      .where((eb) => eb.or([eb('id', '=', ref), eb('name', '=', ref)]))
      .executeTakeFirst();
    return row && templateFromRow(row);
  }

  async listTemplates(): Promise<TemplateRecord[]> {
    return (await this.db.selectFrom('fabric_templates').selectAll().orderBy(this.dialect.byBytes('created_at')).orderBy(this.dialect.byBytes('name')).execute()).map(templateFromRow);
  }

  async updateTemplate(id: string, change: (t: TemplateRecord) => TemplateRecord): Promise<TemplateRecord> {
    return this.db.transaction().execute(async (trx) => {
      const found = await this.dialect.lockRows(trx.selectFrom('fabric_templates').selectAll().where('id', '=', id), 'wait').executeTakeFirst();
      if (!found) throw new NotFoundError('template', id);
      const current = templateFromRow(found);
      const next = { ...change(current), id, createdAt: current.createdAt, updatedAt: new Date().toISOString() };
      const row = await trx
        .updateTable('fabric_templates')
        .set((eb) => ({ name: next.name, state: next.state, doc: docOf(next), updated_at: next.updatedAt, version: eb('version', '+', 1) }))
        .where('id', '=', id)
        .returningAll()
        .executeTakeFirstOrThrow();
      return templateFromRow(row);
    });
  }

  async deleteTemplate(id: string): Promise<void> {
    await this.db.deleteFrom('fabric_templates').where('id', '=', id).execute();
  }

  async insertMember(m: PoolMember): Promise<void> {
    try {
      await this.db
        .insertInto('fabric_members')
        .values({ vm_id: m.vmId, template_id: m.templateId, host_id: m.hostId, state: m.state, state_reason: m.stateReason, created_at: m.createdAt, ready_at: m.readyAt, claimed_at: m.claimedAt, claim_id: m.claimId, updated_at: m.updatedAt })
        .execute();
    } catch (err) {
      if (this.dialect.isUniqueViolation(err)) throw new AlreadyExistsError('pool child', m.vmId);
      throw err;
    }
  }

  async getMember(vmId: string): Promise<PoolMember | undefined> {
    const row = await this.db.selectFrom('fabric_members').selectAll().where('vm_id', '=', vmId).executeTakeFirst();
    return row && memberFromRow(row);
  }

  async listMembers(filter: { templateId?: string; hostId?: string; state?: MemberState } = {}): Promise<PoolMember[]> {
    let query = this.db.selectFrom('fabric_members').selectAll().orderBy(this.dialect.byBytes('created_at')).orderBy(this.dialect.byBytes('vm_id'));
    if (filter.templateId !== undefined) query = query.where('template_id', '=', filter.templateId);
    if (filter.hostId !== undefined) query = query.where('host_id', '=', filter.hostId);
    if (filter.state !== undefined) query = query.where('state', '=', filter.state);
    return (await query.execute()).map(memberFromRow);
  }

  async transitionMember(vmId: string, from: readonly MemberState[], to: MemberState, patch: Partial<Pick<PoolMember, 'stateReason' | 'readyAt' | 'claimedAt' | 'claimId'>> = {}): Promise<PoolMember | undefined> {
    if (from.length === 0) return undefined;
    const values: Partial<FabricMembersTable> = { state: to, updated_at: new Date().toISOString() };
    if (patch.stateReason !== undefined) values.state_reason = patch.stateReason;
    if (patch.readyAt !== undefined) values.ready_at = patch.readyAt;
    if (patch.claimedAt !== undefined) values.claimed_at = patch.claimedAt;
    if (patch.claimId !== undefined) values.claim_id = patch.claimId;
    const row = await this.db.updateTable('fabric_members').set(values).where('vm_id', '=', vmId).where('state', 'in', [...from]).returningAll().executeTakeFirst();
    return row && memberFromRow(row);
  }

  async claimMember(templateId: string, hostIds: readonly string[], claimId: string): Promise<PoolMember | undefined> {
    if (hostIds.length === 0) return undefined;
    // One statement: the oldest ready child (on PostgreSQL locked, skipping rows another claim holds) is
    // updated only if still ready. A child another claim took meanwhile fails the update: try again.
    for (let attempt = 0; attempt < 8; attempt++) {
      const now = new Date().toISOString();
      const row = await this.db
        .updateTable('fabric_members')
        .set({ state: 'claimed', claimed_at: now, claim_id: claimId, state_reason: null, updated_at: now })
        .where('vm_id', '=', (eb) =>
          this.dialect.lockRows(
            eb.selectFrom('fabric_members').select('vm_id').where('template_id', '=', templateId).where('state', '=', 'ready').where('host_id', 'in', [...hostIds]).orderBy(this.dialect.byBytes('ready_at')).orderBy(this.dialect.byBytes('vm_id')).limit(1),
            'skip-locked',
          ),
        )
        .where('state', '=', 'ready')
        .returningAll()
        .executeTakeFirst();
      if (row) return memberFromRow(row);
      const left = await this.db.selectFrom('fabric_members').select('vm_id').where('template_id', '=', templateId).where('state', '=', 'ready').where('host_id', 'in', [...hostIds]).limit(1).executeTakeFirst();
      if (!left) return undefined;
    }
    return undefined;
  }

  async deleteMember(vmId: string): Promise<void> {
    await this.db.deleteFrom('fabric_members').where('vm_id', '=', vmId).execute();
  }
}
