// REST routes of the elastic fabric: templates (made of a running VM, placed
// on other hosts), their pools of ready children (scale), and the hand-out of
// a child (claim).
// Bodies are validated by the fabric's own schemas (one validation for API
// and OpenAPI). Creating or placing a template answers 202 with its task (or
// the ended task with ?wait=true); a scale with ?wait=true answers once the pools are
// refilled; a claim answers once the child runs, its guest agent answering.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { FabricService, VmEngine } from '../vm/index.ts';
import { claimRequestSchema, createTemplateRequestSchema, deleteTemplateRequestSchema, placeTemplateRequestSchema, scaleTemplateRequestSchema } from '../vm/index.ts';
import { errorResponses, waitQuery } from './schemas.ts';
import { optionalJsonBody, validationHook } from './validation.ts';

const anyJson = (description: string) => ({ description, content: { 'application/json': { schema: z.unknown() } } });
const templateRef = z.object({ ref: z.string().min(1).max(200).openapi({ param: { name: 'ref', in: 'path' }, description: 'template name or id' }) });
const forceQuery = z.object({ force: z.enum(['true', 'false']).optional().openapi({ description: 'also remove its pools; its claimed children run on' }) });
const body = (schema: z.ZodType, required = true) => ({ body: { required, content: { 'application/json': { schema } } } });

type Method = 'get' | 'post' | 'delete';
function route(operationId: string, method: Method, path: string, summary: string, request: Record<string, unknown> = {}, status: 200 | 201 | 202 = 200) {
  return createRoute({ operationId, method, path, tags: ['templates'], summary, request, responses: { [status]: anyJson('result'), ...errorResponses } });
}

export function fabricRoutes(fabric: FabricService, engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  const on = (spec: ReturnType<typeof route>, handler: (c: Context) => Promise<unknown>, status = 200) =>
    app.openapi(spec, (async (c: Context) => c.json((await handler(c)) as never, status as 200)) as never);
  const ref = (c: Context) => c.req.param('ref') as string;
  const wait = (c: Context) => c.req.query('wait') === 'true';

  on(route('listTemplates', 'get', '/templates', 'List templates with their copies on hosts and their pools'), () => fabric.list());
  on(
    route('createTemplate', 'post', '/templates', 'Make a parent template of a running VM (frozen memory and disks, as a fork makes them); the VM runs on', { query: waitQuery, ...body(createTemplateRequestSchema) }, 202),
    async (c) => {
      const result = await fabric.create(await c.req.json());
      if (!wait(c) || !result.task) return result;
      const task = await engine.tasks.wait(result.task.id);
      return { template: task.state === 'succeeded' ? await fabric.show(result.template.id) : result.template, task };
    },
    202,
  );
  on(route('getTemplate', 'get', '/templates/{ref}', 'Show a template', { params: templateRef }), (c) => fabric.show(ref(c)));
  on(
    route('deleteTemplate', 'delete', '/templates/{ref}', 'Delete a template; refused while it has children (pool children, claimed children running) unless force=true', { params: templateRef, query: forceQuery }),
    (c) => fabric.delete(ref(c), deleteTemplateRequestSchema.parse({ force: c.req.query('force') === 'true' })),
  );
  on(
    route('placeTemplate', 'post', '/templates/{ref}/place', 'Carry the template to another host (its memory as a checkpoint file, its missing bases and boot files copied); its children can then fork there', { params: templateRef, query: waitQuery, ...body(placeTemplateRequestSchema) }, 202),
    async (c) => {
      const result = await fabric.place(ref(c), await c.req.json());
      if (!wait(c) || !result.task) return result;
      const task = await engine.tasks.wait(result.task.id);
      return { template: await fabric.show(result.template.id), task };
    },
    202,
  );
  on(
    route('scaleTemplate', 'post', '/templates/{ref}/scale', "Set how many ready children the template's pools keep on each host (paused, or running idle with warm), within a memory budget", { params: templateRef, query: waitQuery, ...body(scaleTemplateRequestSchema) }),
    async (c) => fabric.scale(ref(c), await c.req.json(), { wait: wait(c) }),
  );
  on(
    route('claimTemplate', 'post', '/templates/{ref}/claim', 'Hand out a child of the template: a ready one (or forked on demand), given its hostname, fresh entropy, env, SSH key and customisation script, running with its guest agent answering', { params: templateRef, ...body(claimRequestSchema, false) }, 201),
    async (c) => fabric.claim(ref(c), await optionalJsonBody(c)),
    201,
  );
  return app;
}
