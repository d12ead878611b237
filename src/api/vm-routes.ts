// REST routes for VMs: create, list, show, lifecycle operations, exec, console.
// Long operations answer 202 with a task, or with the finished task when
// called with ?wait=true.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { VmAndTask, VmEngine, VmRecord } from '../vm/index.ts';
import { checkpointRequestSchema, createVmRequestSchema, execRequestSchema, forkRequestSchema, restoreRequestSchema, startRequestSchema, stopRequestSchema } from '../vm/index.ts';
import { checkpointSchema, errorResponses, execResultSchema, memorySchema, vmAndTaskSchema, vmRefParam, vmSchema, waitQuery } from './schemas.ts';
import { optionalJsonBody, validationHook } from './validation.ts';

const json = <S extends z.ZodType>(schema: S, description: string) => ({ description, content: { 'application/json': { schema } } });

const listVms = createRoute({ operationId: 'listVms', method: 'get', path: '/vms', tags: ['vms'], summary: 'List VMs', responses: { 200: json(z.array(vmSchema), 'VMs'), ...errorResponses } });
const getVm = createRoute({ operationId: 'getVm', method: 'get', path: '/vms/{ref}', tags: ['vms'], summary: 'Show a VM', request: { params: vmRefParam }, responses: { 200: json(vmSchema, 'the VM'), ...errorResponses } });
const createVm = createRoute({ operationId: 'createVm',
  method: 'post',
  path: '/vms',
  tags: ['vms'],
  summary: 'Create a VM (and boot it with start: true)',
  request: { query: waitQuery, body: { required: true, content: { 'application/json': { schema: createVmRequestSchema } } } },
  responses: { 201: json(vmAndTaskSchema, 'created; with a start task when start was asked'), ...errorResponses },
});
const deleteVm = createRoute({ operationId: 'deleteVm', method: 'delete', path: '/vms/{ref}', tags: ['vms'], summary: 'Delete a stopped VM and its files', request: { params: vmRefParam }, responses: { 200: json(vmSchema, 'the deleted VM'), ...errorResponses } });

function taskRoute(action: 'start' | 'stop', summary: string, body?: z.ZodType) {
  return createRoute({
    operationId: `${action}Vm`,
    method: 'post',
    path: `/vms/{ref}/${action}`,
    tags: ['vms'],
    summary,
    request: { params: vmRefParam, query: waitQuery, ...(body ? { body: { required: false, content: { 'application/json': { schema: body } } } } : {}) },
    responses: { 202: json(vmAndTaskSchema, 'the task'), ...errorResponses },
  });
}
const startVm = taskRoute('start', 'Boot a VM; the task ends when the guest is usable: its guest agent answers (within timeoutMs) and a pending identity is applied', startRequestSchema);
const stopVm = taskRoute('stop', 'ACPI power-down, then kill after timeoutMs', stopRequestSchema);

function simpleRoute(action: 'pause' | 'resume' | 'kill', summary: string) {
  return createRoute({ operationId: `${action}Vm`, method: 'post', path: `/vms/{ref}/${action}`, tags: ['vms'], summary, request: { params: vmRefParam }, responses: { 200: json(vmSchema, 'the VM'), ...errorResponses } });
}
const pauseVm = simpleRoute('pause', 'Pause the vCPUs');
const resumeVm = simpleRoute('resume', 'Resume the vCPUs');
const killVm = simpleRoute('kill', 'Kill QEMU at once');

const forkVm = createRoute({ operationId: 'forkVm',
  method: 'post',
  path: '/vms/{ref}/fork',
  tags: ['vms'],
  summary: 'Fork a running VM into N children sharing its memory copy-on-write; the source resumes too',
  request: { params: vmRefParam, query: waitQuery, body: { required: false, content: { 'application/json': { schema: forkRequestSchema } } } },
  responses: { 202: json(vmAndTaskSchema, 'the fork task; its result lists the children and the timings'), ...errorResponses },
});
const memoryVm = createRoute({ operationId: 'memoryVm',
  method: 'get',
  path: '/vms/{ref}/memory',
  tags: ['vms'],
  summary: "The VM's QEMU memory: resident, proportional (PSS), shared and private, from smaps_rollup",
  request: { params: vmRefParam },
  responses: { 200: json(memorySchema, 'memory use'), ...errorResponses },
});

const checkpointVm = createRoute({ operationId: 'checkpointVm',
  method: 'post',
  path: '/vms/{ref}/checkpoint',
  tags: ['checkpoints'],
  summary: 'Live checkpoint: a short stun, then the VM runs on while the file is written',
  request: { params: vmRefParam, query: waitQuery, body: { required: false, content: { 'application/json': { schema: checkpointRequestSchema } } } },
  responses: { 202: json(vmAndTaskSchema, 'the checkpoint task'), ...errorResponses },
});
const restoreVm = createRoute({ operationId: 'restoreVm',
  method: 'post',
  path: '/restore',
  tags: ['checkpoints'],
  summary: 'Restore a checkpoint as a new VM',
  request: { query: waitQuery, body: { required: true, content: { 'application/json': { schema: restoreRequestSchema } } } },
  responses: { 202: json(vmAndTaskSchema, 'the restore task'), ...errorResponses },
});
const checkpointRef = z.object({ ref: z.string().min(1).max(4096).openapi({ param: { name: 'ref', in: 'path' }, description: 'checkpoint name or id (show also takes the absolute path of a checkpoint file)' }) });
const listCheckpoints = createRoute({ operationId: 'listCheckpoints', method: 'get', path: '/checkpoints', tags: ['checkpoints'], summary: 'List checkpoints', responses: { 200: json(z.array(checkpointSchema), 'checkpoints'), ...errorResponses } });
const getCheckpoint = createRoute({ operationId: 'getCheckpoint', method: 'get', path: '/checkpoints/{ref}', tags: ['checkpoints'], summary: 'Show a checkpoint', request: { params: checkpointRef }, responses: { 200: json(checkpointSchema, 'the checkpoint'), ...errorResponses } });
const deleteCheckpoint = createRoute({ operationId: 'deleteCheckpoint', method: 'delete', path: '/checkpoints/{ref}', tags: ['checkpoints'], summary: 'Delete a checkpoint and its file', request: { params: checkpointRef }, responses: { 200: json(checkpointSchema, 'the deleted checkpoint'), ...errorResponses } });

const execVm = createRoute({ operationId: 'execVm',
  method: 'post',
  path: '/vms/{ref}/exec',
  tags: ['vms'],
  summary: 'Run a program in the guest through the guest agent',
  request: { params: vmRefParam, body: { required: true, content: { 'application/json': { schema: execRequestSchema } } } },
  responses: { 200: json(execResultSchema, 'exit code and captured output'), ...errorResponses },
});
const consoleVm = createRoute({ operationId: 'consoleVm',
  method: 'get',
  path: '/vms/{ref}/console',
  tags: ['vms'],
  summary: 'The tail of the serial console',
  request: { params: vmRefParam, query: z.object({ bytes: z.coerce.number().int().min(1).max(16 * 1024 * 1024).optional() }) },
  responses: { 200: { description: 'console text', content: { 'text/plain': { schema: z.string() } } }, ...errorResponses },
});

/** A VM as the API answers it: its record with its host's name beside the host id. */
function withHostName<T>(engine: VmEngine, value: T): never {
  const name = (vm: VmRecord) => ({ ...vm, host: engine.hostName(vm.hostId) });
  const v = value as unknown as { vm?: VmRecord; hostId?: string; name?: string };
  if (Array.isArray(value)) return value.map((x) => withHostName(engine, x) as unknown) as never;
  if (v && typeof v === 'object' && v.vm && typeof v.vm === 'object') return { ...v, vm: name(v.vm) } as never;
  if (v && typeof v === 'object' && typeof v.hostId === 'string' && typeof v.name === 'string' && 'spec' in v && 'state' in v) return name(v as unknown as VmRecord) as never;
  return value as never;
}

export function vmRoutes(engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  const finish = async (result: VmAndTask, wait: string | undefined): Promise<VmAndTask> => {
    if (wait !== 'true' || !result.task) return result;
    const task = await engine.tasks.wait(result.task.id);
    return { vm: await engine.resolve(result.vm.id), task };
  };

  app.openapi(listVms, async (c) => c.json(withHostName(engine, await engine.list()), 200));
  app.openapi(getVm, async (c) => c.json(withHostName(engine, await engine.resolve(c.req.valid('param').ref)), 200));
  app.openapi(createVm, async (c) => c.json(withHostName(engine, await finish(await engine.create(c.req.valid('json')), c.req.valid('query').wait)), 201));
  app.openapi(deleteVm, async (c) => c.json(withHostName(engine, await engine.delete(c.req.valid('param').ref)), 200));
  app.openapi(startVm, async (c) => c.json(withHostName(engine, await finish(await engine.start(c.req.valid('param').ref, await optionalJsonBody(c)), c.req.valid('query').wait)), 202));
  app.openapi(stopVm, async (c) => {
    return c.json(withHostName(engine, await finish(await engine.stop(c.req.valid('param').ref, await optionalJsonBody(c)), c.req.valid('query').wait)), 202);
  });
  app.openapi(forkVm, async (c) => {
    return c.json(withHostName(engine, await finish(await engine.fork(c.req.valid('param').ref, await optionalJsonBody(c)), c.req.valid('query').wait)), 202);
  });
  app.openapi(checkpointVm, async (c) => {
    return c.json(withHostName(engine, await finish(await engine.checkpoint(c.req.valid('param').ref, await optionalJsonBody(c)), c.req.valid('query').wait)), 202);
  });
  app.openapi(restoreVm, async (c) => c.json(withHostName(engine, await finish(await engine.restore(c.req.valid('json')), c.req.valid('query').wait)), 202));
  app.openapi(listCheckpoints, async (c) => c.json((await engine.listCheckpoints()) as never, 200));
  app.openapi(getCheckpoint, async (c) => c.json((await engine.getCheckpoint(c.req.valid('param').ref)) as never, 200));
  app.openapi(deleteCheckpoint, async (c) => c.json((await engine.deleteCheckpoint(c.req.valid('param').ref)) as never, 200));
  app.openapi(memoryVm, async (c) => c.json(await engine.memory(c.req.valid('param').ref), 200));
  app.openapi(pauseVm, async (c) => c.json(withHostName(engine, await engine.pause(c.req.valid('param').ref)), 200));
  app.openapi(resumeVm, async (c) => c.json(withHostName(engine, await engine.resume(c.req.valid('param').ref)), 200));
  app.openapi(killVm, async (c) => c.json(withHostName(engine, await engine.kill(c.req.valid('param').ref)), 200));
  app.openapi(execVm, async (c) => c.json(await engine.exec(c.req.valid('param').ref, c.req.valid('json')), 200));
  app.openapi(consoleVm, async (c) => c.text(await engine.console(c.req.valid('param').ref, c.req.valid('query').bytes), 200));
  return app;
}
