// The REST API against an in-process daemon: authentication, the OpenAPI
// document, error shapes for bad input, failure paths that must leave no VM
// files, QEMU process or memory file behind, the SSE event stream, and the
// recovery sweep that kills QEMUs the inventory does not know.
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import { loadDefaultGuest } from '../../src/guest/index.ts';
import { createImage, rebaseImage } from '../../src/qemu/index.ts';
import { SqliteInventory } from '../../src/store/index.ts';
import type { EngineEvent, VmRecord } from '../../src/vm/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, eventually, makeTestHome, memoryFiles } from '../harness.ts';

describe('REST API', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  const call = async (method: string, path: string, body?: unknown, token: string | null = daemon.token) => {
    const res = await fetch(`${daemon.url}${path}`, {
      method,
      headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, body: text.startsWith('{') || text.startsWith('[') ? JSON.parse(text) : text };
  };
  const vmDirs = () => (existsSync(join(t.home, 'vms')) ? readdirSync(join(t.home, 'vms')) : []);

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('binds to 127.0.0.1 and requires the bearer token', async () => {
    expect(new URL(daemon.url).hostname).toBe('127.0.0.1');
    expect((await call('GET', '/health', undefined, null)).status).toBe(200);
    const none = await call('GET', '/vms', undefined, null);
    expect(none).toMatchObject({ status: 401, body: { code: 'UNAUTHORIZED' } });
    expect((await call('GET', '/vms', undefined, 'x'.repeat(43))).status).toBe(401);
    expect((await call('GET', '/vms')).status).toBe(200);
  });

  it('serves an OpenAPI document generated from the request schemas', async () => {
    const doc = (await call('GET', '/openapi.json', undefined, null)).body;
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(['/vms', '/vms/{ref}', '/vms/{ref}/start', '/vms/{ref}/exec', '/tasks/{id}']));
    const createBody = doc.paths['/vms'].post.requestBody.content['application/json'].schema;
    expect(JSON.stringify(createBody)).toContain('memory');
  });

  it('documents every operation with an operationId, the error statuses, and usable name patterns', async () => {
    const doc = (await call('GET', '/openapi.json', undefined, null)).body;
    const operations = Object.entries(doc.paths as Record<string, Record<string, { operationId?: string; responses: Record<string, unknown> }>>).flatMap(([path, methods]) => Object.entries(methods).map(([method, op]) => ({ path, method, ...op })));
    expect(operations.length).toBeGreaterThan(40);
    for (const op of operations) expect(op.operationId, `${op.method} ${op.path}`).toMatch(/^[a-z][A-Za-z]+$/);
    expect(new Set(operations.map((o) => o.operationId)).size).toBe(operations.length);
    expect(doc.paths['/events']?.get).toBeDefined();
    expect(doc.paths['/host']?.get?.responses['200']).toBeDefined();
    for (const status of ['403', '415', '422', '502', '504']) expect(Object.keys(doc.paths['/vms'].post.responses)).toContain(status);
    // Every pattern in the document is a valid regular expression without flags, and the name pattern accepts names.
    const patterns = [...JSON.stringify(doc).matchAll(/"pattern":"((?:[^"\\]|\\.)*)"/g)].map((m) => JSON.parse(`"${m[1]}"`) as string);
    expect(patterns.length).toBeGreaterThan(0);
    for (const p of patterns) expect(() => new RegExp(p), p).not.toThrow();
    const namePattern = new RegExp(doc.paths['/vms'].post.requestBody.content['application/json'].schema.properties.name.pattern);
    expect(['web', 'Web-1', 'a_b'].every((n) => namePattern.test(n))).toBe(true);
    expect(['../x', '-a', ''].some((n) => namePattern.test(n))).toBe(false);
  });

  it('answers 415 for a body that is not JSON and 413 for a huge one', async () => {
    const text = await fetch(`${daemon.url}/vms`, { method: 'POST', headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'text/plain' }, body: 'name=x' });
    expect(text.status).toBe(415);
    expect(((await text.json()) as { code: string }).code).toBe('UNSUPPORTED_MEDIA_TYPE');
    const huge = await fetch(`${daemon.url}/vms`, { method: 'POST', headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'x'.repeat(40 * 1024 * 1024) }) });
    expect(huge.status).toBe(413);
    expect(((await huge.json()) as { code: string }).code).toBe('PAYLOAD_TOO_LARGE');
    expect(vmDirs()).toEqual([]);
  });

  it('rejects bad input with INVALID_INPUT and creates nothing', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{ name: 'ok', colour: 'blue' }, /colour/],
      [{ name: '../x' }, /name/],
      [{ name: 'a/b' }, /name/],
      [{ name: 'ok', memory: '1.5G' }, /size/],
      [{ name: 'ok', memory: '8M' }, /out of range/],
      [{ name: 'ok', vcpus: 'two' }, /vcpus/],
      [{ name: 'ok', kernel: { path: '/nonexistent/vmlinuz' } }, /kernel\.path.*\/nonexistent\/vmlinuz/],
      [{ name: 'ok', disks: [{ path: '/nonexistent.qcow2' }] }, /disks\.0\.path/],
    ];
    for (const [body, message] of cases) {
      const r = await call('POST', '/vms', body);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body.code).toBe('INVALID_INPUT');
      expect(r.body.message).toMatch(message);
    }
    expect((await call('POST', '/vms', 'not json')).status).toBe(400);
    const malformed = await fetch(`${daemon.url}/vms`, { method: 'POST', headers: { authorization: `Bearer ${daemon.token}`, 'content-type': 'application/json' }, body: '{bad' });
    expect(malformed.status).toBe(400);
    expect(((await malformed.json()) as { code: string }).code).toBe('INVALID_INPUT');
    expect(vmDirs()).toEqual([]);
    expect((await call('GET', '/vms')).body).toEqual([]);
  });

  it('refuses disks whose qcow2 backing chain leaves their folder or loops, before QEMU sees them', async () => {
    const ds = join(t.home, 'user-disks');
    mkdirSync(ds);
    await createImage({ path: join(ds, 'evil.qcow2'), format: 'qcow2', sizeBytes: 1 << 20, backing: { path: '/etc/shadow', format: 'raw' }, unsafeBacking: true });
    await createImage({ path: join(ds, 'a.qcow2'), format: 'qcow2', sizeBytes: 1 << 20 });
    await createImage({ path: join(ds, 'b.qcow2'), format: 'qcow2', backing: { path: join(ds, 'a.qcow2'), format: 'qcow2' } });
    await rebaseImage(join(ds, 'a.qcow2'), { path: join(ds, 'b.qcow2'), format: 'qcow2' }, { unsafe: true });
    for (const [path, reason] of [[join(ds, 'evil.qcow2'), 'outside-datastore'], [join(ds, 'b.qcow2'), 'loop']] as const) {
      const r = await call('POST', '/vms', { name: 'hostile', disks: [{ path }] });
      expect(r).toMatchObject({ status: 400, body: { code: 'UNSAFE_IMAGE', details: { reason } } });
      const boot = await call('POST', '/vms', { name: 'hostile', bootDisk: path });
      expect(boot.body.code).toBe('UNSAFE_IMAGE');
    }
    expect(vmDirs()).toEqual([]);
    expect(t.qemus()).toEqual([]);
  });

  it('answers NOT_FOUND, ALREADY_EXISTS and ILLEGAL_STATE', async () => {
    expect((await call('GET', '/vms/nope')).body.code).toBe('NOT_FOUND');
    expect((await call('POST', '/vms/nope/start')).status).toBe(404);
    const created = await call('POST', '/vms', { name: 'idle' });
    expect(created.status).toBe(201);
    expect((await call('POST', '/vms', { name: 'idle' })).body.code).toBe('ALREADY_EXISTS');
    const pause = await call('POST', '/vms/idle/pause');
    expect(pause).toMatchObject({ status: 409, body: { code: 'ILLEGAL_STATE', details: { state: 'created', required: ['running'] } } });
    expect((await call('POST', '/vms/idle/stop')).status).toBe(409);
    expect((await call('DELETE', '/vms/idle')).status).toBe(200);
    expect(vmDirs()).toEqual([]);
  });

  it('fails a start whose kernel file vanished, leaving the VM failed and nothing running', async () => {
    const guest = await loadDefaultGuest();
    // Kernels, like disks, come from the allowed folders (here the home).
    const kernel = join(t.home, 'my-vmlinuz');
    copyFileSync(guest.kernel, kernel);
    copyFileSync(guest.initrd, join(t.home, 'my-initrd'));
    const created = await call('POST', '/vms', { name: 'nokernel', kernel: { path: kernel, initrd: join(t.home, 'my-initrd'), cmdline: guest.cmdline } });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    rmSync(kernel);
    const started = await call('POST', '/vms/nokernel/start?wait=true');
    expect(started.body.task.state).toBe('failed');
    expect(started.body.task.error.code).toBe('QEMU_START_FAILED');
    expect(started.body.task.error.message).toContain('my-vmlinuz');
    expect(started.body.vm.state).toBe('failed');
    expect(t.qemus()).toEqual([]);
    expect(memoryFiles(t)).toEqual([]);
    expect((await call('DELETE', '/vms/nokernel')).status).toBe(200);
  });

  it('streams state changes; a QEMU killed mid-boot fails the start task cleanly', async () => {
    const events: EngineEvent[] = [];
    const abort = new AbortController();
    const reading = (async () => {
      try {
        for await (const e of t.client().events(abort.signal)) events.push(e);
      } catch {
        // aborted
      }
    })();
    await new Promise((r) => setTimeout(r, 200));
    const created = await call('POST', '/vms', { name: 'victim', start: true });
    expect(created.status).toBe(201);
    const taskId = created.body.task.id as string;
    let vm: VmRecord | undefined;
    await eventually(async () => {
      vm = (await call('GET', '/vms/victim')).body as VmRecord;
      return Boolean(vm.runtime?.pid);
    }, 20_000, 'QEMU to start');
    process.kill(vm?.runtime?.pid as number, 'SIGKILL');
    const task = (await call('GET', `/tasks/${taskId}?wait=true`)).body;
    expect(task.state).toBe('failed');
    const after = (await call('GET', '/vms/victim')).body as VmRecord;
    expect(after.state).toBe('failed');
    expect(t.qemus()).toEqual([]);
    expect(memoryFiles(t)).toEqual([]);
    await eventually(() => events.some((e) => e.type === 'vm.state' && e.vm.name === 'victim' && e.vm.state === 'failed'), 5_000, 'failed event');
    expect(events.some((e) => e.type === 'vm.state' && e.vm.name === 'victim' && e.vm.state === 'starting')).toBe(true);
    expect(events.some((e) => e.type === 'task' && e.task.id === taskId && e.task.state === 'failed')).toBe(true);
    abort.abort();
    await reading;
    expect((await call('DELETE', '/vms/victim')).status).toBe(200);
  });

  it('kills QEMUs and removes files the inventory does not know, on restart', async () => {
    const created = await call('POST', '/vms?wait=true', { name: 'ghost', start: true });
    expect(created.body.task.state, JSON.stringify(created.body.task.error)).toBe('succeeded');
    const vm = created.body.vm as VmRecord;
    await daemon.close();
    // Simulate a daemon that died between starting QEMU and recording the VM.
    const inventory = await SqliteInventory.open(join(t.home, 'inventory.sqlite'));
    await inventory.deleteVm(vm.id);
    await inventory.close();
    expect(t.qemus().map((q) => q.vmId)).toEqual([vm.id]);
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    expect(t.qemus()).toEqual([]);
    expect(vmDirs()).toEqual([]);
    expect(memoryFiles(t)).toEqual([]);
  });
});
