// Per-VM operation claims (table vm_claims): one operation on a VM at a time,
// across every controller of the inventory. A claim has an owner (controller
// id), an operation name, a token unique to the acquisition and an expiry the
// owner renews while it works; a controller that dies loses its claims when
// they expire. Acquire is one statement on both databases — an upsert that
// overwrites the VM's row only when it has expired — so two controllers
// racing for a VM cannot both win: the loser reads the holder and gets BUSY.
import { randomUUID } from 'node:crypto';
import type { Kysely, Selectable } from 'kysely';
import type { VmClaim, VmClaims } from '../vm/index.ts';
import { BusyError, LeaseLostError } from '../vm/index.ts';
import { expiryAfter } from './clock.ts';
import type { Clock } from './clock.ts';
import type { Database, VmClaimsTable } from './schema.ts';

function claimFromRow(row: Selectable<VmClaimsTable>): VmClaim {
  return { vmId: row.vm_id, owner: row.owner, operation: row.operation, token: row.token, claimedAt: row.claimed_at, expiresAt: row.expires_at };
}

export class KyselyVmClaims implements VmClaims {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly clock: Clock,
  ) {}

  acquire(vmId: string, owner: string, operation: string, ttlMs: number): Promise<VmClaim> {
    return this.tryAcquire(vmId, owner, operation, ttlMs, 1);
  }

  private async tryAcquire(vmId: string, owner: string, operation: string, ttlMs: number, attempt: number): Promise<VmClaim> {
    const { now, expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = { vm_id: vmId, owner, operation, token: randomUUID(), claimed_at: now, expires_at: expiresAt };
    const taken = await this.db
      .insertInto('vm_claims')
      .values(row)
      .onConflict((oc) =>
        oc
          .column('vm_id')
          .doUpdateSet({ owner, operation, token: row.token, claimed_at: now, expires_at: expiresAt })
          .where('vm_claims.expires_at', '<=', now),
      )
      .returningAll()
      .executeTakeFirst();
    if (taken) return claimFromRow(taken);
    const holder = await this.get(vmId);
    // Released between the upsert and this read: try again (a few times; each needs another release in between).
    if (!holder && attempt < 3) return this.tryAcquire(vmId, owner, operation, ttlMs, attempt + 1);
    if (!holder) throw new BusyError(vmId, 'another controller', 'an operation', this.clock());
    throw new BusyError(vmId, holder.owner, holder.operation, holder.expiresAt);
  }

  async renew(claim: VmClaim, ttlMs: number): Promise<VmClaim> {
    const { expiresAt } = expiryAfter(this.clock, ttlMs);
    const row = await this.db.updateTable('vm_claims').set({ expires_at: expiresAt }).where('vm_id', '=', claim.vmId).where('token', '=', claim.token).returningAll().executeTakeFirst();
    if (row) return claimFromRow(row);
    const holder = await this.get(claim.vmId);
    throw new LeaseLostError('claim', claim.vmId, claim.owner, holder ? `${holder.owner} (${holder.operation})` : null);
  }

  async release(claim: VmClaim): Promise<void> {
    await this.db.deleteFrom('vm_claims').where('vm_id', '=', claim.vmId).where('token', '=', claim.token).execute();
  }

  async releaseOwnedBy(owner: string): Promise<number> {
    const result = await this.db.deleteFrom('vm_claims').where('owner', '=', owner).executeTakeFirst();
    return Number(result.numDeletedRows);
  }

  async get(vmId: string): Promise<VmClaim | undefined> {
    const row = await this.db.selectFrom('vm_claims').selectAll().where('vm_id', '=', vmId).executeTakeFirst();
    return row && claimFromRow(row);
  }
}
