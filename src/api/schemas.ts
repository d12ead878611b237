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
    hostId: z.string().describe('the id of the host the VM lives on'),
    host: z.string().describe('the name of that host'),
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
    allowedRoots: z.array(z.string()).describe('folders whose files VMs may use as they are: the home, the datastores, --allow-images folders'),
    confinement: z
      .object({
        user: z.string().nullable().describe('the unprivileged user QEMU runs as (null: as the daemon)'),
        confined: z.boolean().describe('QEMU runs without root privileges'),
        sandbox: z.boolean().describe('QEMU runs with its seccomp sandbox'),
        lazyRestoreConfined: z.boolean().describe('the QEMU of a lazy restore is confined too (needs vm.unprivileged_userfaultfd=1)'),
        reasons: z.array(z.string()).describe('why a part of the confinement is missing on this host'),
      })
      .describe('how QEMU is confined on this host'),
  })
  .openapi('Host');

export const vmRefParam = z.object({ ref: z.string().min(1).max(128).openapi({ param: { name: 'ref', in: 'path' }, description: 'VM id or name' }) });
export const taskIdParam = z.object({ id: z.string().min(1).max(64).openapi({ param: { name: 'id', in: 'path' } }) });
export const waitQuery = z.object({
  wait: z.enum(['true', 'false']).optional().openapi({ description: 'wait until the task finishes before answering' }),
});

const error = (description: string) => ({ description, content: { 'application/json': { schema: errorSchema } } });

/** Every error status the API answers with (the body is always an Error with a stable code). */
export const errorResponses = {
  400: error('invalid input (INVALID_INPUT, UNSAFE_IMAGE, NOT_A_REGULAR_FILE, DATASTORE_PATH_INVALID, CHECKPOINT_CORRUPT, ...)'),
  401: error('missing or wrong bearer token (UNAUTHORIZED)'),
  403: error('a host path outside the folders Offshoot may use (PATH_NOT_ALLOWED)'),
  404: error('not found (NOT_FOUND, CHECKPOINT_NOT_FOUND)'),
  409: error('illegal state, name or file taken, object in use (ILLEGAL_STATE, ALREADY_EXISTS, DISK_IN_USE, ...)'),
  413: error('request body too large (PAYLOAD_TOO_LARGE)'),
  415: error('the request body is not JSON (UNSUPPORTED_MEDIA_TYPE)'),
  422: error('understood but refused (IMPORT_REFUSED, DISK_CREATE_FAILED)'),
  500: error('internal error (INTERNAL, QEMU_START_FAILED, MIGRATION_FAILED, ...)'),
  502: error('a VM\'s QEMU ended during the operation (VM_CRASHED)'),
  504: error('a time limit passed (TIMEOUT, GUEST_AGENT_UNAVAILABLE)'),
  507: error('a file system is full (NO_SPACE)'),
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
