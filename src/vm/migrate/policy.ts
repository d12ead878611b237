// Migration policies (issue 12 part 6): defaults for live migrations, set for
// the whole fleet and overridden per host, kept in the inventory so every
// controller reads the same ones. A value is resolved, field by field, from
// the first of: the migration's own option > the source host's policy (the
// destination host's for maxIncoming) > the fleet's policy > the built-in
// default. The fields: the bandwidth cap, the downtime limit, whether
// post-copy is allowed (auto|never|always), auto-converge, and how many
// migrations a host sends (maxOutgoing) and receives (maxIncoming) at once
// (the queue, admission.ts, holds the ones beyond). A patch sets fields of one
// scope; null removes a field from it (it falls through to the next scope).
import { z } from 'zod';
import { InvalidInputError } from '../../common/index.ts';
import { parseRequest } from '../requests.ts';
import { parseRate } from './migrate-request.ts';

export const POSTCOPY_MODES = ['auto', 'never', 'always'] as const;
export type PostcopyMode = (typeof POSTCOPY_MODES)[number];

/** The values a policy scope may set (each optional: unset falls through). */
export interface MigrationPolicy {
  maxBandwidthBytesPerSecond?: number;
  downtimeLimitMs?: number;
  postcopy?: PostcopyMode;
  autoConverge?: boolean;
  maxOutgoing?: number;
  maxIncoming?: number;
}
export type PolicyField = keyof MigrationPolicy;
export const POLICY_FIELDS = ['maxBandwidthBytesPerSecond', 'downtimeLimitMs', 'postcopy', 'autoConverge', 'maxOutgoing', 'maxIncoming'] as const satisfies readonly PolicyField[];

/** Where a resolved value came from. */
export type PolicySource = 'request' | 'host' | 'fleet' | 'default';

/** Built-in defaults: QEMU-level ones as a migration without options had them; 8 migrations each way per host. */
export const DEFAULT_POLICY: Required<MigrationPolicy> = { maxBandwidthBytesPerSecond: 4 * 2 ** 30, downtimeLimitMs: 300, postcopy: 'auto', autoConverge: false, maxOutgoing: 8, maxIncoming: 8 };

/** The values a migration used, and where each came from. */
export type ResolvedPolicy = Required<MigrationPolicy> & { sources: Record<PolicyField, PolicySource> };

/** The policy rows of the inventory (store/migration-policies.ts): scope `fleet` or a host id. */
export interface MigrationPolicyStore {
  getPolicy(scope: string): Promise<{ policy: MigrationPolicy; updatedAt: string } | undefined>;
  listPolicies(): Promise<Array<{ scope: string; policy: MigrationPolicy; updatedAt: string }>>;
  /** Writes a scope's policy (replacing it); an empty policy deletes the row. */
  putPolicy(scope: string, policy: MigrationPolicy): Promise<void>;
  deletePolicy(scope: string): Promise<boolean>;
}

export const FLEET_SCOPE = 'fleet';

/** A change to one scope: a value sets a field, null removes it. */
export const policyPatchSchema = z.strictObject({
  maxBandwidth: z.union([z.string().max(32), z.number().int().positive()]).nullable().optional().describe('bandwidth cap, e.g. "500M" (bytes per second); null removes it'),
  downtimeLimitMs: z.number().int().min(1).max(600_000).nullable().optional().describe('the longest stop QEMU plans for at the switch-over'),
  postcopy: z.enum(POSTCOPY_MODES).nullable().optional().describe('post-copy allowed: auto (when pre-copy stops converging), never, always'),
  autoConverge: z.boolean().nullable().optional().describe("throttle the guest's vCPUs while it dirties memory too fast"),
  maxOutgoing: z.number().int().min(1).max(64).nullable().optional().describe('how many migrations a host sends at once (more wait in a queue)'),
  maxIncoming: z.number().int().min(1).max(64).nullable().optional().describe('how many migrations a host receives at once (more wait in a queue)'),
});
export type PolicyPatch = z.output<typeof policyPatchSchema>;

/** A validated bandwidth in bytes per second (at least 1 MiB/s). */
export function bandwidthOf(rate: string | number): number {
  const bytes = parseRate(rate);
  if (bytes < 2 ** 20) throw new InvalidInputError(`maxBandwidth ${rate} is below 1 MiB/s`, { maxBandwidth: rate });
  return bytes;
}

/** Applies a patch (validated: INVALID_INPUT) to a scope's policy. */
export function applyPatch(policy: MigrationPolicy, input: unknown): MigrationPolicy {
  const patch = parseRequest('migration policy', policyPatchSchema, input);
  const next: MigrationPolicy = { ...policy };
  const set = <K extends PolicyField>(field: K, value: MigrationPolicy[K] | null | undefined) => {
    if (value === undefined) return;
    if (value === null) delete next[field];
    else next[field] = value;
  };
  set('maxBandwidthBytesPerSecond', patch.maxBandwidth === undefined || patch.maxBandwidth === null ? patch.maxBandwidth : bandwidthOf(patch.maxBandwidth));
  set('downtimeLimitMs', patch.downtimeLimitMs);
  set('postcopy', patch.postcopy);
  set('autoConverge', patch.autoConverge);
  set('maxOutgoing', patch.maxOutgoing);
  set('maxIncoming', patch.maxIncoming);
  return next;
}

/** Only the known fields with valid values (a row written by newer code may hold more). */
export function cleanPolicy(raw: unknown): MigrationPolicy {
  const r = (raw ?? {}) as Record<string, unknown>;
  const out: MigrationPolicy = {};
  if (typeof r.maxBandwidthBytesPerSecond === 'number') out.maxBandwidthBytesPerSecond = r.maxBandwidthBytesPerSecond;
  if (typeof r.downtimeLimitMs === 'number') out.downtimeLimitMs = r.downtimeLimitMs;
  if (typeof r.postcopy === 'string' && (POSTCOPY_MODES as readonly string[]).includes(r.postcopy)) out.postcopy = r.postcopy as PostcopyMode;
  if (typeof r.autoConverge === 'boolean') out.autoConverge = r.autoConverge;
  if (typeof r.maxOutgoing === 'number') out.maxOutgoing = r.maxOutgoing;
  if (typeof r.maxIncoming === 'number') out.maxIncoming = r.maxIncoming;
  return out;
}

/**
 * Resolves every field: `request` (the migration's own options) > `source` (the source host's policy; the
 * destination's for maxIncoming) > `fleet` > built-in default.
 */
export function resolvePolicy(layers: { request?: MigrationPolicy; source?: MigrationPolicy; destination?: MigrationPolicy; fleet?: MigrationPolicy }): ResolvedPolicy {
  const values = {} as Record<PolicyField, unknown>;
  const sources = {} as Record<PolicyField, PolicySource>;
  for (const field of POLICY_FIELDS) {
    const host = field === 'maxIncoming' ? layers.destination : layers.source;
    const found = ([['request', layers.request], ['host', host], ['fleet', layers.fleet]] as const).find(([, p]) => p?.[field] !== undefined);
    values[field] = found ? found[1]?.[field] : DEFAULT_POLICY[field];
    sources[field] = found ? found[0] : 'default';
  }
  return { ...(values as Required<MigrationPolicy>), sources };
}

/** The options a migrate request named itself (its defaults are not options: policies fill those). */
export function requestPolicy(input: unknown): MigrationPolicy {
  const r = (input && typeof input === 'object' ? input : {}) as Record<string, unknown>;
  const out: MigrationPolicy = {};
  if (r.maxBandwidth !== undefined) out.maxBandwidthBytesPerSecond = bandwidthOf(r.maxBandwidth as string | number);
  if (r.downtimeLimitMs !== undefined) out.downtimeLimitMs = r.downtimeLimitMs as number;
  if (r.postcopy !== undefined) out.postcopy = r.postcopy as PostcopyMode;
  if (r.autoConverge !== undefined) out.autoConverge = r.autoConverge as boolean;
  return out;
}

/** Reads the layers of a migration from `source` to `destination` (host ids) and resolves them. */
export async function policyFor(store: MigrationPolicyStore, request: MigrationPolicy, sourceId: string, destinationId: string): Promise<ResolvedPolicy> {
  const [fleet, source, destination] = await Promise.all([store.getPolicy(FLEET_SCOPE), store.getPolicy(sourceId), store.getPolicy(destinationId)]);
  return resolvePolicy({ request, source: source?.policy, destination: destination?.policy, fleet: fleet?.policy });
}
