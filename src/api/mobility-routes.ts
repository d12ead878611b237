// REST routes of mobility between hosts: a copy job handed to another host
// (`POST /jobs/{id}/move`: the worker on its host stops after its chunk in
// flight and the new host's worker goes on from the progress file); a disk's
// chain seeded to another host's datastore keeping its content ids
// (`POST /disks/{ref}/seed`); what a move of a VM would skip because the
// destination holds its bases by content id (`POST /vms/{ref}/move-plan`);
// which chains of content ids a host holds (`POST /hosts/{ref}/content`);
// a VM moved to another host by content id (`POST /vms/{ref}/move`).
// Bodies are validated by the storage service's own schemas.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { StorageService } from '../vm/index.ts';
import { findContentRequestSchema, moveJobRequestSchema, movePlanRequestSchema, moveVmRequestSchema, seedDiskRequestSchema } from '../vm/index.ts';
import { errorResponses, vmRefParam, waitQuery } from './schemas.ts';
import { validationHook } from './validation.ts';

const anyJson = (description: string) => ({ description, content: { 'application/json': { schema: z.unknown() } } });
const jobId = z.object({ id: z.string().min(1).max(200).openapi({ param: { name: 'id', in: 'path' }, description: 'copy job id' }) });

const moveJobRoute = createRoute({
  operationId: 'moveJob',
  method: 'post',
  path: '/jobs/{id}/move',
  tags: ['jobs'],
  summary: 'Hand a copy job over to another host: it goes on there from its recorded chunks (with ?wait=true, answered at its end); the answer says what each host copied',
  request: { params: jobId, query: waitQuery, body: { required: true, content: { 'application/json': { schema: moveJobRequestSchema } } } },
  responses: { 200: anyJson('the job and the bytes each host copied'), ...errorResponses },
});

const diskRef = z.object({ ref: z.string().min(1).max(200).openapi({ param: { name: 'ref', in: 'path' }, description: 'disk id or DATASTORE/NAME (URL-encoded)' }) });
const hostRef = z.object({ ref: z.string().min(1).max(128).openapi({ param: { name: 'ref', in: 'path' }, description: 'host id or name' }) });
const body = (schema: z.ZodType) => ({ body: { required: true, content: { 'application/json': { schema } } } });

const seedRoute = createRoute({
  operationId: 'seedDisk',
  method: 'post',
  path: '/disks/{ref}/seed',
  tags: ['disks'],
  summary: "Copy a disk's chain ahead of time to another host's datastore, keeping its content ids (a copy job for the layers it lacks; with ?wait=true, answered at its end)",
  request: { params: diskRef, query: waitQuery, ...body(seedDiskRequestSchema) },
  responses: { 202: anyJson('the target datastore, the layers skipped and copied, and the copy job'), ...errorResponses },
});

const movePlanRoute = createRoute({
  operationId: 'movePlan',
  method: 'post',
  path: '/vms/{ref}/move-plan',
  tags: ['vms'],
  summary: "Which read-only layers of a VM's disks a host holds by content id: what a move there skips and what it sends (read-only)",
  request: { params: vmRefParam, ...body(movePlanRequestSchema) },
  responses: { 200: anyJson('per disk: layers, held, sent, bytes'), ...errorResponses },
});

const moveVmRoute = createRoute({
  operationId: 'moveVm',
  method: 'post',
  path: '/vms/{ref}/move',
  tags: ['vms'],
  summary: 'Move a VM to another host sending only what it lacks by content id: live (a migration) for a running VM, cold for a stopped one; answers the plan and the task',
  request: { params: vmRefParam, ...body(moveVmRequestSchema) },
  responses: { 202: anyJson('the mode, the disks skipped and sent with their bytes, and the task'), ...errorResponses },
});

const findContentRoute = createRoute({
  operationId: 'findContent',
  method: 'post',
  path: '/hosts/{ref}/content',
  tags: ['hosts'],
  summary: 'Which chains of content ids (each top first) a host holds, and where; with verify, hashed against the given hashes',
  request: { params: hostRef, ...body(findContentRequestSchema) },
  responses: { 200: anyJson('one answer per chain'), ...errorResponses },
});

export function mobilityRoutes(storage: StorageService): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  const wait = (c: Context) => c.req.query('wait') === 'true';
  app.openapi(moveJobRoute, (async (c: Context) => c.json((await storage.handover.moveAndReport(c.req.param('id') as string, await c.req.json(), wait(c))) as never, 200)) as never);
  app.openapi(seedRoute, (async (c: Context) => {
    const result = await storage.seeder.seed(c.req.param('ref') as string, await c.req.json());
    return c.json((wait(c) && result.job ? { ...result, job: await storage.jobs.wait(result.job.id) } : result) as never, 202);
  }) as never);
  app.openapi(movePlanRoute, (async (c: Context) => c.json((await storage.movePlan(c.req.param('ref') as string, await c.req.json())) as never, 200)) as never);
  app.openapi(moveVmRoute, (async (c: Context) => c.json((await storage.mover.move(c.req.param('ref') as string, await c.req.json())) as never, 202)) as never);
  app.openapi(findContentRoute, (async (c: Context) => c.json((await storage.findContent(c.req.param('ref') as string, await c.req.json())) as never, 200)) as never);
  return app;
}
