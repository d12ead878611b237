// REST routes for hosts: list, show, add (with the agent's credential), drain,
// maintenance, back to ready, remove. A host's credential is never answered.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { Fleet } from '../vm/index.ts';
import { HOST_STATES, addHostRequestSchema } from '../vm/index.ts';
import { errorResponses } from './schemas.ts';
import { validationHook } from './validation.ts';

export const hostViewSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    url: z.string().describe('the agent\'s address ("local:" for the controller\'s own host)'),
    state: z.enum(HOST_STATES),
    stateReason: z.string().nullable(),
    epoch: z.number().int(),
    protocolVersion: z.number().int(),
    capabilities: z.array(z.string()),
    facts: z.record(z.string(), z.unknown()).nullable(),
    lastSeenAt: z.string().nullable(),
    leaseExpiresAt: z.string().nullable(),
    vms: z.number().int(),
    memory: z.object({ freeBytes: z.number(), totalBytes: z.number() }).nullable(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('HostView');

const hostRef = z.object({ ref: z.string().min(1).max(128).openapi({ param: { name: 'ref', in: 'path' }, description: 'host id or name' }) });
const json = <S extends z.ZodType>(schema: S, description: string) => ({ description, content: { 'application/json': { schema } } });

const listHosts = createRoute({ method: 'get', path: '/hosts', operationId: 'listHosts', tags: ['hosts'], summary: 'Hosts with their state, VMs and memory', responses: { 200: json(z.array(hostViewSchema), 'hosts'), ...errorResponses } });
const getHost = createRoute({ method: 'get', path: '/hosts/{ref}', operationId: 'showHost', tags: ['hosts'], summary: 'Show a host', request: { params: hostRef }, responses: { 200: json(hostViewSchema, 'the host'), ...errorResponses } });
const addHost = createRoute({
  method: 'post',
  path: '/hosts',
  operationId: 'addHost',
  tags: ['hosts'],
  summary: "Add a host whose agent answers at url; refused unless its agent speaks this controller's protocol",
  request: { body: { required: true, content: { 'application/json': { schema: addHostRequestSchema } } } },
  responses: { 201: json(hostViewSchema, 'the host'), ...errorResponses },
});
function adminRoute(action: 'drain' | 'maintenance' | 'ready', summary: string) {
  return createRoute({ method: 'post', path: `/hosts/{ref}/${action}`, operationId: `${action}Host`, tags: ['hosts'], summary, request: { params: hostRef }, responses: { 200: json(hostViewSchema, 'the host'), ...errorResponses } });
}
const drainHost = adminRoute('drain', 'Take a host out of placement while its VMs are moved off');
const maintenanceHost = adminRoute('maintenance', 'Take a host out of placement (an operator\'s hold)');
const readyHost = adminRoute('ready', 'Put a drained or held host back into placement');
const removeHost = createRoute({ method: 'delete', path: '/hosts/{ref}', operationId: 'removeHost', tags: ['hosts'], summary: 'Forget a host (refused while VMs live there)', request: { params: hostRef }, responses: { 200: json(hostViewSchema, 'the removed host'), ...errorResponses } });

/** The API's view of a host: the record without its credential, with VM count and memory. */
async function view(fleet: Fleet, host: Awaited<ReturnType<Fleet['resolve']>>) {
  const v = await fleet.view(host);
  return { ...v, memory: v.facts ? { freeBytes: v.facts.memory.freeBytes, totalBytes: v.facts.memory.totalBytes } : null };
}

export function hostRoutes(fleet: Fleet): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(listHosts, async (c) => c.json((await Promise.all((await fleet.list()).map(async (h) => view(fleet, await fleet.resolve(h.id))))) as never, 200));
  app.openapi(getHost, async (c) => c.json((await view(fleet, await fleet.resolve(c.req.valid('param').ref))) as never, 200));
  app.openapi(addHost, async (c) => c.json((await view(fleet, await fleet.add(c.req.valid('json')))) as never, 201));
  app.openapi(drainHost, async (c) => c.json((await view(fleet, await fleet.setAdminState(c.req.valid('param').ref, 'draining'))) as never, 200));
  app.openapi(maintenanceHost, async (c) => c.json((await view(fleet, await fleet.setAdminState(c.req.valid('param').ref, 'maintenance'))) as never, 200));
  app.openapi(readyHost, async (c) => c.json((await view(fleet, await fleet.setAdminState(c.req.valid('param').ref, 'ready'))) as never, 200));
  app.openapi(removeHost, async (c) => c.json((await view(fleet, await fleet.remove(c.req.valid('param').ref))) as never, 200));
  return app;
}
