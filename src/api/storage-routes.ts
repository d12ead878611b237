// REST routes of the storage service: datastores, disks, clones, online
// flatten, disk pools and copy jobs. Bodies are validated by the storage
// service's own schemas (one validation for API and OpenAPI); long work
// answers with a task or a copy job, or its end with ?wait=true.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { StorageService, VmEngine } from '../vm/index.ts';
import { addDatastoreRequestSchema, attachDatastoreRequestSchema, attachDiskRequestSchema, cloneRequestSchema, createDiskRequestSchema, createPoolRequestSchema, flattenRequestSchema, importDiskRequestSchema, moveDiskRequestSchema, resizeDiskRequestSchema, resizePoolRequestSchema, verifyDiskRequestSchema } from '../vm/index.ts';
import { errorResponses, vmRefParam, waitQuery } from './schemas.ts';
import { optionalJsonBody, validationHook } from './validation.ts';

const anyJson = (description: string) => ({ description, content: { 'application/json': { schema: z.unknown() } } });
const param = (name: string, description: string) => z.object({ [name]: z.string().min(1).max(200).openapi({ param: { name, in: 'path' }, description }) });
const nameParam = param('name', 'datastore name');
const diskRef = param('ref', 'disk id or DATASTORE/NAME (URL-encoded)');
const jobId = param('id', 'copy job id');
const poolRef = param('ref', 'pool name or id');
const body = (schema: z.ZodType, required = true) => ({ body: { required, content: { 'application/json': { schema } } } });

type Method = 'get' | 'post' | 'delete';
function route(operationId: string, method: Method, path: string, tag: string, summary: string, request: Record<string, unknown> = {}, status: 200 | 201 | 202 = 200) {
  return createRoute({ operationId, method, path, tags: [tag], summary, request, responses: { [status]: anyJson('result'), ...errorResponses } });
}

export function storageRoutes(storage: StorageService, engine: VmEngine): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  // The handlers validate bodies with the service's schemas; the routes declare them for the document.
  const on = (spec: ReturnType<typeof route>, handler: (c: Context) => Promise<unknown>, status = 200) =>
    app.openapi(spec, (async (c: Context) => c.json((await handler(c)) as never, status as 200)) as never);
  const p = (c: Context, name: string) => c.req.param(name) as string;
  const waitFor = async (c: Context, result: { job?: { id: string } | null; task?: { id: string } | null }) => {
    if (c.req.query('wait') !== 'true') return result;
    if (result.job) return { ...result, job: await storage.jobs.wait(result.job.id) };
    if (result.task) return { ...result, task: await engine.tasks.wait(result.task.id) };
    return result;
  };

  on(route('listDatastores', 'get', '/datastores', 'datastores', 'List datastores with capacity and use'), () => storage.catalog.listDatastores());
  on(route('addDatastore', 'post', '/datastores', 'datastores', 'Add a datastore (a folder; its existing disks are read from their sidecars)', body(addDatastoreRequestSchema), 201), async (c) => storage.catalog.addDatastore(await c.req.json()), 201);
  on(route('getDatastore', 'get', '/datastores/{name}', 'datastores', 'Show a datastore', { params: nameParam }), (c) => storage.catalog.showDatastore(p(c, 'name')));
  on(route('removeDatastore', 'delete', '/datastores/{name}', 'datastores', 'Forget a datastore (its files stay); refused while in use', { params: nameParam }), (c) => storage.catalog.removeDatastore(p(c, 'name')));
  on(route('attachDatastore', 'post', '/datastores/{name}/hosts', 'datastores', 'Share a datastore with another host that sees the same folder', { params: nameParam, ...body(attachDatastoreRequestSchema) }), async (c) => storage.catalog.attachDatastore(p(c, 'name'), await c.req.json()));
  on(route('rescanDatastore', 'post', '/datastores/{name}/rescan', 'datastores', 'Rebuild the disk records of a datastore from its sidecar files', { params: nameParam }), (c) => storage.catalog.rescan(p(c, 'name')));

  on(route('listDisks', 'get', '/disks', 'disks', 'List disks', { query: z.object({ datastore: z.string().optional() }) }), (c) => storage.catalog.listDisks(c.req.query('datastore')));
  on(route('createDisk', 'post', '/disks', 'disks', 'Create a blank disk', body(createDiskRequestSchema), 201), async (c) => storage.catalog.createDisk(await c.req.json()), 201);
  on(route('importDisk', 'post', '/disks/import', 'disks', 'Import a qcow2, raw or monolithic vmdk file as a new disk', body(importDiskRequestSchema), 201), async (c) => storage.catalog.importDisk(await c.req.json()), 201);
  on(route('getDisk', 'get', '/disks/{ref}', 'disks', 'Show a disk with its chain and users', { params: diskRef }), (c) => storage.catalog.showDisk(p(c, 'ref')));
  on(route('deleteDisk', 'delete', '/disks/{ref}', 'disks', 'Delete a disk nothing uses or descends from', { params: diskRef }), (c) => storage.catalog.deleteDisk(p(c, 'ref')));
  on(route('resizeDisk', 'post', '/disks/{ref}/resize', 'disks', 'Grow a disk', { params: diskRef, ...body(resizeDiskRequestSchema) }), async (c) => storage.catalog.resizeDisk(p(c, 'ref'), await c.req.json()));
  on(route('verifyDisk', 'post', '/disks/{ref}/verify', 'disks', 'Hash a disk and compare it with the disks of the same content id (or a named one)', { params: diskRef, ...body(verifyDiskRequestSchema, false) }), async (c) => storage.catalog.verifyDisk(p(c, 'ref'), await optionalJsonBody(c)));
  on(route('moveDisk', 'post', '/disks/{ref}/move', 'disks', 'Move a disk to another datastore (a copy job)', { params: diskRef, query: waitQuery, ...body(moveDiskRequestSchema) }, 202), async (c) => (await waitFor(c, { job: await storage.moveDisk(p(c, 'ref'), await c.req.json()) })).job, 202);

  on(route('cloneVm', 'post', '/vms/{ref}/clone', 'vms', 'Clone a VM: linked (a delta, O(1)), full (a copy job or a pool copy), instant (boots now, streams in the background)', { params: vmRefParam, query: waitQuery, ...body(cloneRequestSchema) }, 202), async (c) => waitFor(c, await storage.clone(p(c, 'ref'), await c.req.json())), 202);
  on(route('attachDisk', 'post', '/vms/{ref}/disks', 'vms', 'Attach a datastore disk to a stopped VM (as a read-only base under a delta of its own)', { params: vmRefParam, ...body(attachDiskRequestSchema) }), async (c) => storage.attachDisk(p(c, 'ref'), await c.req.json()));
  on(route('flattenVm', 'post', '/vms/{ref}/flatten', 'vms', "Flatten a running VM's disk chains online (QEMU block-stream)", { params: vmRefParam, query: waitQuery, ...body(flattenRequestSchema, false) }, 202), async (c) => (await waitFor(c, { task: await storage.flatten(p(c, 'ref'), await optionalJsonBody(c)) })).task, 202);

  on(route('listJobs', 'get', '/jobs', 'jobs', 'List copy jobs'), () => storage.jobs.list());
  on(route('getJob', 'get', '/jobs/{id}', 'jobs', 'Show a copy job (with ?wait=true, once it has ended or paused)', { params: jobId, query: waitQuery }), (c) => (c.req.query('wait') === 'true' ? storage.jobs.wait(p(c, 'id')) : storage.jobs.get(p(c, 'id'))));
  on(route('pauseJob', 'post', '/jobs/{id}/pause', 'jobs', 'Stop the worker after its chunk in flight', { params: jobId }), (c) => storage.jobs.pause(p(c, 'id')));
  on(route('resumeJob', 'post', '/jobs/{id}/resume', 'jobs', 'Resume a paused or failed job from its recorded chunks', { params: jobId }), (c) => storage.jobs.resume(p(c, 'id')));
  on(route('cancelJob', 'post', '/jobs/{id}/cancel', 'jobs', 'Cancel a job and remove what it copied', { params: jobId }), (c) => storage.jobs.cancel(p(c, 'id')));

  on(route('listPools', 'get', '/pools', 'pools', 'List disk pools'), () => storage.pools.list());
  on(route('createPool', 'post', '/pools', 'pools', 'Create a pool of pre-copied disks of a VM on a datastore', body(createPoolRequestSchema), 201), async (c) => storage.pools.create(await c.req.json()), 201);
  on(route('getPool', 'get', '/pools/{ref}', 'pools', 'Show a pool', { params: poolRef }), (c) => storage.pools.get(p(c, 'ref')));
  on(route('resizePool', 'post', '/pools/{ref}/resize', 'pools', 'Change how many copies a pool keeps', { params: poolRef, ...body(resizePoolRequestSchema) }), async (c) => storage.pools.resize(p(c, 'ref'), await c.req.json()));
  on(route('deletePool', 'delete', '/pools/{ref}', 'pools', 'Delete a pool and its copies', { params: poolRef }), (c) => storage.pools.delete(p(c, 'ref')));
  return app;
}
