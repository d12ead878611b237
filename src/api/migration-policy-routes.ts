// REST routes of migration policies and host drains (issue 12 part 6):
//   GET    /migration-policies[?host=H]   the defaults, the fleet's policy, the
//                                         hosts' overrides, and what a host's
//                                         migrations get (effective)
//   PATCH  /migration-policies[?host=H]   set fields of the fleet's policy or a
//                                         host's override (null removes one)
//   DELETE /migration-policies/hosts/{ref} drop a host's override
//   POST   /hosts/{ref}/evacuate          set the host draining and live-migrate
//                                         its VMs off ({stopped:"move"}: its
//                                         stopped VMs go by cold move): 202 with
//                                         the `host.drain` task (?wait=true: the
//                                         finished task)
// Bad values answer INVALID_INPUT, unknown hosts NOT_FOUND, a drain to the
// host itself or to a host that is not ready DRAIN_REFUSED.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { VmEngine } from '../vm/index.ts';
import { POSTCOPY_MODES, drainRequestSchema, policyPatchSchema } from '../vm/index.ts';
import { errorResponses, taskSchema, waitQuery } from './schemas.ts';
import { validationHook } from './validation.ts';

const policySchema = z
  .object({
    maxBandwidthBytesPerSecond: z.number().optional(),
    downtimeLimitMs: z.number().optional(),
    postcopy: z.enum(POSTCOPY_MODES).optional(),
    autoConverge: z.boolean().optional(),
    maxOutgoing: z.number().optional(),
    maxIncoming: z.number().optional(),
  })
  .openapi('MigrationPolicy');
const resolvedSchema = policySchema.required().extend({ sources: z.record(z.string(), z.enum(['request', 'host', 'fleet', 'default'])) }).openapi('ResolvedMigrationPolicy');
const viewSchema = z
  .object({
    defaults: policySchema,
    fleet: policySchema,
    hosts: z.array(z.object({ host: z.string(), hostId: z.string(), policy: policySchema, updatedAt: z.string() })),
    host: z.object({ name: z.string(), id: z.string(), policy: policySchema, effective: resolvedSchema }).optional(),
    effective: resolvedSchema,
  })
  .openapi('MigrationPolicyView');

const hostQuery = z.object({ host: z.string().min(1).max(128).optional().openapi({ description: 'a host (name or id): its override instead of the fleet\'s policy' }) });
const hostRef = z.object({ ref: z.string().min(1).max(128).openapi({ param: { name: 'ref', in: 'path' }, description: 'host id or name' }) });
const json = <S extends z.ZodType>(schema: S, description: string) => ({ description, content: { 'application/json': { schema } } });

const showPolicy = createRoute({ method: 'get', path: '/migration-policies', operationId: 'showMigrationPolicy', tags: ['hosts'], summary: "Migration policies: built-in defaults, the fleet's, the hosts' overrides, and what a host's migrations get", request: { query: hostQuery }, responses: { 200: json(viewSchema, 'the policies'), ...errorResponses } });
const setPolicy = createRoute({
  method: 'patch',
  path: '/migration-policies',
  operationId: 'setMigrationPolicy',
  tags: ['hosts'],
  summary: "Set fields of the fleet's migration policy, or of a host's override (?host=); null removes a field",
  request: { query: hostQuery, body: { required: true, content: { 'application/json': { schema: policyPatchSchema } } } },
  responses: { 200: json(viewSchema, 'the policies after the change'), ...errorResponses },
});
const clearPolicy = createRoute({ method: 'delete', path: '/migration-policies/hosts/{ref}', operationId: 'clearMigrationPolicy', tags: ['hosts'], summary: "Drop a host's migration policy override (its migrations follow the fleet's policy)", request: { params: hostRef }, responses: { 200: json(viewSchema, 'the policies after the change'), ...errorResponses } });
const evacuate = createRoute({
  method: 'post',
  path: '/hosts/{ref}/evacuate',
  operationId: 'evacuateHost',
  tags: ['hosts'],
  summary: 'Drain a host: set it draining and live-migrate its running VMs to other ready hosts under the migration limits (stopped: "move" also cold-moves its stopped VMs), as one task',
  request: { params: hostRef, query: waitQuery, body: { required: false, content: { 'application/json': { schema: drainRequestSchema } } } },
  responses: { 202: json(z.object({ task: taskSchema }), 'the host.drain task'), ...errorResponses },
});

export function migrationPolicyRoutes(engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(showPolicy, async (c) => c.json((await engine.migrationPolicies.show(c.req.valid('query').host)) as never, 200));
  app.openapi(setPolicy, async (c) => c.json((await engine.migrationPolicies.set(c.req.valid('query').host, c.req.valid('json'))) as never, 200));
  app.openapi(clearPolicy, async (c) => c.json((await engine.migrationPolicies.clear(c.req.valid('param').ref)) as never, 200));
  app.openapi(evacuate, async (c) => {
    const body = (await c.req.json().catch(() => ({}))) as unknown;
    let task = await engine.drainHost(c.req.valid('param').ref, body ?? {});
    if (c.req.valid('query').wait === 'true') task = await engine.tasks.wait(task.id);
    return c.json({ task } as never, 202);
  });
  return app;
}
