// REST route of group migration: POST /migrations with `{ members: [{vm, to}],
// mode, ...tuning }` answers 202 with the `vm.migrate-group` task (or the
// finished task with ?wait=true). While it runs the task's result holds each
// member's state and memory still to send; when it ends, the moved and stayed
// members, each member's downtime and the switch-over spread (spreadMs).
// POST /tasks/{id}/cancel stops it before its commit: every member runs on at
// its source.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { VmEngine } from '../vm/index.ts';
import { groupMigrateRequestSchema } from '../vm/index.ts';
import { errorResponses, taskSchema, waitQuery } from './schemas.ts';
import { validationHook } from './validation.ts';

const migrateGroup = createRoute({
  operationId: 'migrateGroup',
  method: 'post',
  path: '/migrations',
  tags: ['vms'],
  summary: 'Live-migrate several VMs together with one coordinated switch-over: all move or none (consistent), or the ones that reached their switch-over move (available)',
  request: { query: waitQuery, body: { required: true, content: { 'application/json': { schema: groupMigrateRequestSchema } } } },
  responses: { 202: { description: 'the group migration task', content: { 'application/json': { schema: z.object({ task: taskSchema }) } } }, ...errorResponses },
});

export function groupRoutes(engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(migrateGroup, async (c) => {
    let task = await engine.migrateGroup(c.req.valid('json'));
    if (c.req.valid('query').wait === 'true') task = await engine.tasks.wait(task.id);
    return c.json({ task } as never, 202);
  });
  return app;
}
