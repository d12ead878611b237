// The API fuzz probe of the hardening issue: walks GET /openapi.json and
// sends every operation malformed requests (fast-check): wrong types, missing
// and unknown fields, huge numbers and strings, NUL, path tricks, special
// files (a FIFO, a folder, /dev/zero) and host files where paths go, bodies
// that are not objects, not JSON or too large, bad query values, hostile
// path parameters, and wrong credentials. Every answer must be below 500 (an
// error with a stable code when it is 4xx), and afterwards the inventory and
// the home's files must be exactly as before (and consistent: the harness
// checks the invariants at the end). Requests whose body is an object always
// carry something invalid, and operations without a body only get refs that
// name nothing, so no request may change anything.
//
// FUZZ_RUNS sets the number of generated requests (default 4000), FUZZ_SEED
// the seed (printed, so a failure can be replayed).
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join, relative } from 'node:path';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDaemon } from '../../src/api/index.ts';
import type { RunningDaemon } from '../../src/api/index.ts';
import type { TestHome } from '../harness.ts';
import { closeTestDaemon, makeTestHome } from '../harness.ts';
import { snapshotHome } from '../invariants.ts';

interface Operation {
  method: string;
  path: string;
  operationId: string;
  params: string[];
  body: Record<string, unknown> | undefined;
  eventStream: boolean;
}

type JsonSchema = { type?: string | string[]; properties?: Record<string, JsonSchema>; required?: string[]; items?: JsonSchema; anyOf?: JsonSchema[]; enum?: unknown[] };

const RUNS = Number(process.env.FUZZ_RUNS ?? 4000);
const SEED = Number(process.env.FUZZ_SEED ?? Date.now() % 2 ** 31);

describe('API fuzz', () => {
  let t: TestHome;
  let daemon: RunningDaemon;
  let ops: Operation[] = [];
  let hostilePaths: string[] = [];
  const stats = { requests: 0, resent: 0, byStatus: new Map<number, number>(), serverErrors: [] as string[] };

  /**
   * Files of the home, the datastore and the memory folder (without the inventory and log, which change, and
   * the agent's journal of the operations it ran: a refused import or restore is an operation that failed).
   */
  const fileTree = () => {
    const walk = (dir: string): string[] => (existsSync(dir) ? readdirSync(dir, { withFileTypes: true }).flatMap((e) => [join(dir, e.name), ...(e.isDirectory() ? walk(join(dir, e.name)) : [])]) : []);
    return [...walk(t.home), ...walk(t.memoryDir)]
      // The agent's operation journal (one file per operation, and the empty spare files it writes them into) is bookkeeping.
      .filter((p) => !/inventory\.sqlite|daemon\.log|serve\.out|\/operations\/([0-9a-f-]+\.json|spare-[0-9a-f]+\.json\.tmp-\d+)$/.test(p))
      .map((p) => `${relative('/', p)} ${statSync(p, { throwIfNoEntry: false })?.isDirectory() ? 'dir' : 'file'}`)
      .sort();
  };
  const state = async () => {
    const s = await snapshotHome(t.client());
    // Free space is the machine's, not the home's.
    const datastores = s.datastores.map((d) => ({ ...d, usage: { ...(d as unknown as { usage: object }).usage, freeBytes: 0 } }));
    return { ...s, datastores, tasks: (await t.client().listTasks(1000)).map((task) => task.id) };
  };

  async function send(method: string, path: string, init: { body?: string; contentType?: string; token?: string | null } = {}): Promise<void> {
    const headers: Record<string, string> = {};
    const token = init.token === undefined ? daemon.token : init.token;
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (init.contentType) headers['content-type'] = init.contentType;
    const controller = new AbortController();
    const attempt = () => fetch(`${daemon.url}${path}`, { method, headers, body: init.body, signal: controller.signal });
    // The server may close a kept-alive connection after refusing a body it did not read; that is HTTP, not a
    // failure: such a request is sent once more on a new connection (counted), and must then be answered.
    const res = await attempt().catch((err: Error & { cause?: { code?: string } }) => {
      if (err.cause?.code !== 'UND_ERR_SOCKET') throw err;
      stats.resent++;
      return attempt();
    });
    stats.requests++;
    stats.byStatus.set(res.status, (stats.byStatus.get(res.status) ?? 0) + 1);
    if (res.headers.get('content-type')?.includes('event-stream')) {
      controller.abort();
      return;
    }
    const text = await res.text();
    if (res.status >= 500) stats.serverErrors.push(`${method} ${path} ${String(init.body).slice(0, 200)} -> ${res.status} ${text.slice(0, 300)}`);
    if (res.status >= 400 && res.status < 500) {
      const body = JSON.parse(text) as { code?: unknown; message?: unknown; details?: unknown };
      expect(typeof body.code, `${method} ${path}: ${text.slice(0, 200)}`).toBe('string');
      expect(typeof body.message).toBe('string');
    }
  }

  beforeAll(async () => {
    t = makeTestHome();
    daemon = await startDaemon({ home: t.home, memoryDir: t.memoryDir });
    // Something to aim at: a VM (never started), a datastore with a disk.
    await daemon.engine.create({ name: 'fz-vm', memory: '64M' });
    await daemon.storage.catalog.addDatastore({ name: 'fzds', path: join(t.home, 'datastores', 'fzds') });
    await daemon.storage.catalog.createDisk({ datastore: 'fzds', name: 'fzdisk', size: '1M' });
    // Things where paths go: none of them may ever be used, opened or created.
    const traps = join(t.home, 'traps');
    mkdirSync(traps);
    execFileSync('mkfifo', [join(traps, 'fifo')]);
    mkdirSync(join(traps, 'folder'));
    symlinkSync('/etc/shadow', join(traps, 'shadow-link'));
    hostilePaths = ['/etc/shadow', '/etc/passwd', '/dev/zero', '/dev/null', '/proc/self/mem', join(traps, 'fifo'), join(traps, 'folder'), join(traps, 'shadow-link'), join(traps, 'missing'), `${traps}/a\u0000b`, `${traps}/../../../../etc/shadow`, 'relative/path', '', '/', t.home, t.memoryDir, `/${'x'.repeat(5000)}`];
    const doc = (await (await fetch(`${daemon.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, { operationId: string; requestBody?: { content?: Record<string, { schema: JsonSchema }> }; responses: Record<string, { content?: Record<string, unknown> }> }>> };
    ops = Object.entries(doc.paths).flatMap(([path, methods]) =>
      Object.entries(methods).map(([method, op]) => ({
        method: method.toUpperCase(),
        path,
        operationId: op.operationId,
        params: [...path.matchAll(/\{(\w+)\}/g)].map((m) => m[1] as string),
        body: op.requestBody?.content?.['application/json']?.schema as Record<string, unknown> | undefined,
        eventStream: Boolean(op.responses['200']?.content?.['text/event-stream']),
      })),
    );
  });
  afterAll(() => closeTestDaemon(daemon, t));

  it('answers every malformed request to every operation below 500 and changes nothing', async () => {
    expect(ops.length).toBeGreaterThan(40);
    const before = { state: await state(), files: fileTree() };
    const realRefs: Record<string, string[]> = { ref: ['fz-vm', 'fzds/fzdisk'], name: ['fzds'], id: [] };

    const hostileString = fc.oneof(
      fc.constantFrom(...hostilePaths),
      fc.string({ maxLength: 40 }),
      fc.string({ unit: 'grapheme', maxLength: 20 }),
      fc.constantFrom('../../etc/passwd', '..', '.', '%2e%2e%2f', 'a/b', '-rf', '\u0000', ' ', 'fz-vm', 'x'.repeat(70), 'x'.repeat(200_000), '<script>', '${HOME}', '$(reboot)', 'CON', '🙂'),
    );
    const hostileNumber = fc.oneof(fc.constantFrom(-1, 0, 0.5, 1e308, -1e308, 2 ** 53, 2 ** 53 + 2, 9007199254740991, 4294967296, -0), fc.integer(), fc.double({ noNaN: true, noDefaultInfinity: true }));
    const hostileValue = fc.oneof(hostileString, hostileNumber, fc.boolean(), fc.constant(null), fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 5 }), fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }));
    // A value for a property: usually of another type or hostile; sometimes plausible (so other fields are reached).
    const valueFor = (schema: JsonSchema | undefined, name: string): fc.Arbitrary<unknown> => {
      const plausible: fc.Arbitrary<unknown>[] = [];
      const type = Array.isArray(schema?.type) ? schema?.type[0] : schema?.type;
      if (schema?.enum) plausible.push(fc.constantFrom(...schema.enum));
      if (/path|source|out|checkpoint|kernel|initrd|bootDisk/i.test(name)) plausible.push(fc.constantFrom(...hostilePaths));
      if (type === 'object' && schema?.properties) plausible.push(objectFor(schema, false));
      if (type === 'array') plausible.push(fc.array(valueFor(schema?.items, name), { maxLength: 3 }));
      return plausible.length ? fc.oneof(hostileValue, ...plausible) : hostileValue;
    };
    /** An object for `schema`; with `poisoned`, always invalid (an unknown key, or a required key missing). */
    const objectFor = (schema: JsonSchema, poisoned: boolean): fc.Arbitrary<Record<string, unknown>> => {
      const props = Object.entries(schema.properties ?? {});
      const base = fc.record(Object.fromEntries(props.map(([k, s]) => [k, valueFor(s, k)])), { requiredKeys: [] });
      if (!poisoned) return base as fc.Arbitrary<Record<string, unknown>>;
      return fc.tuple(base, fc.string({ minLength: 1, maxLength: 12 })).map(([o, key]) => ({ ...o, [`zz-unknown-${key}`]: 1 }));
    };
    const body = (op: Operation) =>
      fc.oneof(
        { weight: 6, arbitrary: op.body ? objectFor(op.body as JsonSchema, true).map((o) => ({ text: JSON.stringify(o), type: 'application/json' })) : fc.constant({ text: '{"zz-unknown":1}', type: 'application/json' }) },
        { weight: 1, arbitrary: fc.oneof(fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 }), fc.string(), fc.integer(), fc.boolean()).map((v) => ({ text: JSON.stringify(v), type: 'application/json' })) },
        { weight: 1, arbitrary: fc.constantFrom('{bad', '{"a":', '\u0000', '[1,2', '{"name":"x"}}').map((text) => ({ text, type: 'application/json' })) },
        { weight: 1, arbitrary: fc.constantFrom('text/plain', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/xml').map((type) => ({ text: 'name=x&path=/etc/shadow', type })) },
      );
    const paramValue = (op: Operation, param: string) => {
      // Operations without a body act on a real ref as asked: they only get refs that name nothing.
      const reals = op.body ? (realRefs[param] ?? []) : [];
      return fc.oneof(hostileString.filter((s) => s.length > 0 && s.length < 10_000 && !['fz-vm', 'fzds'].includes(s)), ...(reals.length ? [fc.constantFrom(...reals)] : []));
    };
    const query = fc.oneof(fc.constant(''), fc.constantFrom('?wait=maybe', '?wait=true&wait=false', '?limit=-1', '?limit=abc', '?bytes=0', '?bytes=99999999999', '?datastore=%00', `?x=${'y'.repeat(5000)}`));
    const request = fc.integer({ min: 0, max: ops.length - 1 }).chain((i) => {
      const op = ops[i] as Operation;
      return fc.tuple(fc.constant(op), fc.tuple(...op.params.map((p) => paramValue(op, p))), body(op), query, fc.boolean());
    });

    process.stdout.write(`api fuzz: ${RUNS} requests over ${ops.length} operations, seed ${SEED}\n`);
    await fc.assert(
      fc.asyncProperty(request, async ([op, params, b, q, withBody]) => {
        let path = op.path;
        op.params.forEach((p, i) => (path = path.replace(`{${p}}`, encodeURIComponent(String(params[i])))));
        const sendBody = (op.body !== undefined || withBody) && op.method !== 'GET';
        await send(op.method, `${path}${q}`, sendBody ? { body: b.text, contentType: b.type } : {});
        expect(stats.serverErrors).toEqual([]);
      }),
      { numRuns: RUNS, seed: SEED, endOnFailure: true },
    );

    // Requests valid in form whose host paths must be refused (outside the allowed folders, special files,
    // folders, missing, NUL, tricks): they reach the path policy, the datastore placement and the import checks.
    const dsPath = join(t.home, 'datastores', 'fzds');
    const badPlaces = ['/', '/etc', '/usr/lib', '/proc/x', '/sys/x', '/dev/zero', '/etc/passwd', '/etc/passwd/x', t.home, join(t.home, 'vms'), join(t.home, 'bases', 'x'), dsPath, join(dsPath, 'inner'), t.memoryDir, `${t.home}/a\u0000b`, 'relative', join(t.home, 'traps', 'fifo'), join(t.home, 'traps', 'fifo', 'x')];
    const badSources = [join(t.home, 'traps', 'fifo'), join(t.home, 'traps', 'folder'), join(t.home, 'traps', 'missing'), '/dev/zero', '/dev/null', '/proc/self/mem', '/proc/self/environ', '/sys/kernel/notes', `${t.home}/a\u0000b`, 'relative', '/'];
    const curated: Array<[string, string, unknown]> = [];
    for (const h of hostilePaths) {
      curated.push(['POST', '/vms', { name: 'fzx', kernel: { path: h } }], ['POST', '/vms', { name: 'fzx', bootDisk: h }], ['POST', '/vms', { name: 'fzx', disks: [{ path: h }] }], ['POST', '/vms', { name: 'fzx', disks: [{ path: h, readOnly: true }] }]);
      curated.push(['POST', '/restore', { checkpoint: h }], ['POST', '/restore', { checkpoint: h, mode: 'eager', name: 'fzr' }], ['POST', '/vms/fz-vm/checkpoint', { out: h, name: 'fzck' }]);
      curated.push(['GET', `/checkpoints/${encodeURIComponent(h)}`, undefined], ['DELETE', `/checkpoints/${encodeURIComponent(h)}`, undefined]);
    }
    for (const h of badPlaces) curated.push(['POST', '/datastores', { name: 'fzx', path: h }]);
    for (const h of badSources) curated.push(['POST', '/disks/import', { datastore: 'fzds', name: 'fzi', source: h }], ['POST', '/disks/import', { datastore: 'fzds', name: 'fzi', source: h, format: 'raw' }]);
    for (const size of [0, -1, 0.5, 2 ** 53, 9007199254740991, 1e308, '0', '-1M', '1.5G', '99999999T', 'abc', '']) curated.push(['POST', '/disks', { datastore: 'fzds', name: 'fzn', size }]);
    for (const [method, path, payload] of curated) {
      const before4xx = [...stats.byStatus].filter(([s]) => s >= 400 && s < 500).reduce((n, [, c]) => n + c, 0);
      await send(method, path, payload === undefined ? {} : { body: JSON.stringify(payload), contentType: 'application/json' });
      const after4xx = [...stats.byStatus].filter(([s]) => s >= 400 && s < 500).reduce((n, [, c]) => n + c, 0);
      expect(after4xx, `${method} ${path} ${JSON.stringify(payload)} must be refused`).toBe(before4xx + 1);
    }

    // Every operation also gets: a body over the size limit, and credentials that are not the token.
    const huge = `"${'a'.repeat(33 * 1024 * 1024)}"`;
    const badTokens: Array<string | null> = [null, '', 'x', daemon.token.slice(1), `${daemon.token}x`, daemon.token.toUpperCase() === daemon.token ? 'Y'.repeat(43) : daemon.token.toUpperCase()];
    for (const op of ops) {
      const path = op.path.replace(/\{\w+\}/g, 'zz-none');
      if (op.method !== 'GET') await send(op.method, path, { body: huge, contentType: 'application/json' });
      if (op.path === '/health' || op.path === '/openapi.json') continue;
      for (const token of badTokens) {
        const before401 = stats.byStatus.get(401) ?? 0;
        await send(op.method, path, { token, ...(op.method !== 'GET' ? { body: '{}', contentType: 'application/json' } : {}) }).catch(() => undefined);
        expect(stats.byStatus.get(401), `${op.method} ${op.path} with token ${JSON.stringify(token)}`).toBe(before401 + 1);
      }
    }

    const counts = Object.fromEntries([...stats.byStatus].sort((a, b) => a[0] - b[0]));
    process.stdout.write(`api fuzz: ${stats.requests} requests sent (${stats.resent} resent on a new connection), answers by status ${JSON.stringify(counts)}, ${stats.serverErrors.length} with 5xx\n`);
    expect(stats.serverErrors).toEqual([]);
    expect(stats.requests).toBeGreaterThanOrEqual(RUNS);
    expect(await state()).toEqual(before.state);
    expect(fileTree()).toEqual(before.files);
    // The daemon still works.
    expect((await t.client().getVm('fz-vm')).state).toBe('created');
  });
});
