// REST route of live migration: POST /vms/{ref}/migrate answers 202 with the
// `vm.migrate` task (or the finished task with ?wait=true). While it runs the
// task's result holds its live progress (pass, memory remaining, dirty rate,
// bandwidth, expected downtime, disk mirror progress); when it ends, its
// result (downtimeMs, totalMs, bytes, passes, post-copy, the path used).
// POST /tasks/{id}/cancel stops it before its switch-over.
import { OpenAPIHono, createRoute } from '@hono/zod-openapi';
import type { VmAndTask, VmEngine } from '../vm/index.ts';
import { migrateRequestSchema } from '../vm/index.ts';
import { errorResponses, vmAndTaskSchema, vmRefParam, waitQuery } from './schemas.ts';
import { validationHook } from './validation.ts';

const migrateVm = createRoute({
  operationId: 'migrateVm',
  method: 'post',
  path: '/vms/{ref}/migrate',
  tags: ['vms'],
  summary: 'Live-migrate a VM to another host, its local disks mirrored, over a network path made for this migration; the VM runs on at its source if anything fails or the task is cancelled before the switch-over',
  request: { params: vmRefParam, query: waitQuery, body: { required: true, content: { 'application/json': { schema: migrateRequestSchema } } } },
  responses: { 202: { description: 'the migration task', content: { 'application/json': { schema: vmAndTaskSchema } } }, ...errorResponses },
});

export function migrateRoutes(engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.openapi(migrateVm, async (c) => {
    let result: VmAndTask = await engine.migrate(c.req.valid('param').ref, c.req.valid('json'));
    if (c.req.valid('query').wait === 'true' && result.task) {
      const task = await engine.tasks.wait(result.task.id);
      result = { vm: await engine.resolve(result.vm.id), task };
    }
    return c.json({ ...result, vm: { ...result.vm, host: engine.hostName(result.vm.hostId) } } as never, 202);
  });
  return app;
}

