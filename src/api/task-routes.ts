// REST routes for tasks: list, show, wait for one to finish, and cancel one
// that allows it (a checkpoint being written).
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { VmEngine } from '../vm/index.ts';
import { errorResponses, taskIdParam, taskSchema } from './schemas.ts';
import { validationHook } from './validation.ts';

const listTasks = createRoute({ operationId: 'listTasks',
  method: 'get',
  path: '/tasks',
  tags: ['tasks'],
  summary: 'Recent tasks, newest first',
  request: { query: z.object({ limit: z.coerce.number().int().min(1).max(1000).optional() }) },
  responses: { 200: { description: 'tasks', content: { 'application/json': { schema: z.array(taskSchema) } } }, ...errorResponses },
});
const getTask = createRoute({ operationId: 'getTask',
  method: 'get',
  path: '/tasks/{id}',
  tags: ['tasks'],
  summary: 'Show a task (with ?wait=true, once it has finished)',
  request: { params: taskIdParam, query: z.object({ wait: z.enum(['true', 'false']).optional() }) },
  responses: { 200: { description: 'the task', content: { 'application/json': { schema: taskSchema } } }, ...errorResponses },
});

const cancelTask = createRoute({ operationId: 'cancelTask',
  method: 'post',
  path: '/tasks/{id}/cancel',
  tags: ['tasks'],
  summary: 'Cancel a running task that allows it (a checkpoint being written); answers the task once it has rolled back',
  request: { params: taskIdParam },
  responses: { 200: { description: 'the cancelled (failed) task', content: { 'application/json': { schema: taskSchema } } }, ...errorResponses },
});

export function taskRoutes(engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(listTasks, async (c) => c.json((await engine.tasks.list(c.req.valid('query').limit ?? 50)) as never, 200));
  app.openapi(getTask, async (c) => {
    const { id } = c.req.valid('param');
    const task = c.req.valid('query').wait === 'true' ? await engine.tasks.wait(id) : await engine.tasks.get(id);
    return c.json(task as never, 200);
  });
  app.openapi(cancelTask, async (c) => c.json((await engine.cancelTask(c.req.valid('param').id)) as never, 200));
  return app;
}
