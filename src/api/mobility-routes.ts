// REST routes of mobility between hosts: a copy job handed to another host
// (`POST /jobs/{id}/move`: the worker on its host stops after its chunk in
// flight and the new host's worker goes on from the progress file). Bodies
// are validated by the storage service's own schemas.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { StorageService } from '../vm/index.ts';
import { moveJobRequestSchema } from '../vm/index.ts';
import { errorResponses, waitQuery } from './schemas.ts';
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

export function mobilityRoutes(storage: StorageService): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(moveJobRoute, (async (c: Context) => c.json((await storage.handover.moveAndReport(c.req.param('id') as string, await c.req.json(), c.req.query('wait') === 'true')) as never, 200)) as never);
  return app;
}
