// The engine's front of migration policies (policy.ts): show the built-in
// defaults, the fleet's policy, the hosts' overrides and what a host's
// migrations get (effective); set fields of the fleet's or a host's policy (a
// patch, null removes a field); clear a host's override.
import type { EngineContext } from '../engine-context.ts';
import type { MigrationPolicy, MigrationPolicyStore, ResolvedPolicy } from './policy.ts';
import { DEFAULT_POLICY, FLEET_SCOPE, applyPatch, resolvePolicy } from './policy.ts';

export interface PolicyView {
  defaults: Required<MigrationPolicy>;
  fleet: MigrationPolicy;
  /** Each host with an override (by name). */
  hosts: Array<{ host: string; hostId: string; policy: MigrationPolicy; updatedAt: string }>;
  /** With a host: its own override and what its migrations get (as source; maxIncoming as destination). */
  host?: { name: string; id: string; policy: MigrationPolicy; effective: ResolvedPolicy };
  /** Without a host: what a migration gets from the fleet's policy and the defaults. */
  effective: ResolvedPolicy;
}

export class MigrationPolicies {
  constructor(
    private readonly ctx: EngineContext,
    private readonly store: MigrationPolicyStore,
  ) {}

  async show(hostRef?: string): Promise<PolicyView> {
    const rows = await this.store.listPolicies();
    const fleet = rows.find((r) => r.scope === FLEET_SCOPE)?.policy ?? {};
    const names = new Map(this.ctx.fleet.hosts().map((h) => [h.id, h.name]));
    const hosts = rows.filter((r) => r.scope !== FLEET_SCOPE).map((r) => ({ host: names.get(r.scope) ?? r.scope, hostId: r.scope, policy: r.policy, updatedAt: r.updatedAt }));
    const view: PolicyView = { defaults: DEFAULT_POLICY, fleet, hosts, effective: resolvePolicy({ fleet }) };
    if (hostRef) {
      const host = await this.ctx.fleet.resolve(hostRef);
      const policy = rows.find((r) => r.scope === host.id)?.policy ?? {};
      view.host = { name: host.name, id: host.id, policy, effective: resolvePolicy({ source: policy, destination: policy, fleet }) };
    }
    return view;
  }

  /** Applies a patch to the fleet's policy, or to a host's override. */
  async set(hostRef: string | undefined, patch: unknown): Promise<PolicyView> {
    const scope = hostRef ? (await this.ctx.fleet.resolve(hostRef)).id : FLEET_SCOPE;
    const current = (await this.store.getPolicy(scope))?.policy ?? {};
    await this.store.putPolicy(scope, applyPatch(current, patch));
    this.ctx.logger.info({ scope: hostRef ?? FLEET_SCOPE }, 'migration policy changed');
    return this.show(hostRef);
  }

  /** Drops a host's override (its migrations follow the fleet's policy again). */
  async clear(hostRef: string): Promise<PolicyView> {
    const host = await this.ctx.fleet.resolve(hostRef);
    await this.store.deletePolicy(host.id);
    return this.show(hostRef);
  }
}
