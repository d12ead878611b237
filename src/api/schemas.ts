// Response and parameter schemas of the REST API. Request bodies reuse the VM
// layer's schemas, so the OpenAPI document and the validation are one thing.
import { z } from '@hono/zod-openapi';
import { TASK_STATES, VM_STATES } from '../vm/index.ts';

export const errorSchema = z
  .object({
    code: z.string().describe('stable error code, e.g. INVALID_INPUT, NOT_FOUND, ILLEGAL_STATE'),
    message: z.string(),
    details: z.record(z.string(), z.unknown()),
  })
  .openapi('Error');

export const vmSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    state: z.enum(VM_STATES),
    stateReason: z.string().nullable(),
    spec: z.record(z.string(), z.unknown()),
    runtime: z.record(z.string(), z.unknown()).nullable(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Vm');

export const taskSchema = z
  .object({
    id: z.string(),
    kind: z.string(),
    targetId: z.string(),
    targetName: z.string(),
    state: z.enum(TASK_STATES),
    progress: z.number(),
    message: z.string(),
    result: z.unknown(),
    error: errorSchema.nullable(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Task');

export const vmAndTaskSchema = z.object({ vm: vmSchema, task: taskSchema.optional() }).openapi('VmAndTask');

export const execResultSchema = z
  .object({
    exitCode: z.number().nullable(),
    signal: z.number().nullable(),
    stdout: z.string().describe('base64'),
    stderr: z.string().describe('base64'),
  })
  .openapi('ExecResult');

export const hostSchema = z
  .object({
    hostId: z.string(),
    accel: z.enum(['kvm', 'tcg']),
    accelReason: z.string(),
    qemuVersion: z.string(),
    memoryDir: z.string(),
    vmsDir: z.string(),
  })
  .openapi('Host');

export const vmRefParam = z.object({ ref: z.string().min(1).max(128).openapi({ param: { name: 'ref', in: 'path' }, description: 'VM id or name' }) });
export const taskIdParam = z.object({ id: z.string().min(1).max(64).openapi({ param: { name: 'id', in: 'path' } }) });
export const waitQuery = z.object({
  wait: z.enum(['true', 'false']).optional().openapi({ description: 'wait until the task finishes before answering' }),
});

export const errorResponses = {
  400: { description: 'invalid input', content: { 'application/json': { schema: errorSchema } } },
  401: { description: 'missing or wrong bearer token', content: { 'application/json': { schema: errorSchema } } },
  404: { description: 'not found', content: { 'application/json': { schema: errorSchema } } },
  409: { description: 'illegal state or name taken', content: { 'application/json': { schema: errorSchema } } },
  500: { description: 'internal or QEMU error', content: { 'application/json': { schema: errorSchema } } },
} as const;

export const memorySchema = z
  .object({
    rssKiB: z.number(),
    pssKiB: z.number(),
    sharedKiB: z.number(),
    privateKiB: z.number(),
    mode: z.string().describe('owned: the VM has its own RAM file; derived: it maps a template copy-on-write'),
    templateId: z.string().nullable(),
  })
  .openapi('VmMemory');

export const checkpointSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    vmId: z.string(),
    vmName: z.string(),
    path: z.string(),
    state: z.enum(['writing', 'complete', 'failed']),
    memoryBytes: z.number(),
    fileBytes: z.number().nullable(),
    spec: z.record(z.string(), z.unknown()),
    createdAt: z.string(),
  })
  .openapi('Checkpoint');
