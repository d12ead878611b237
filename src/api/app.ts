// Builds the HTTP application: auth, a body size limit (413), JSON-only
// bodies (415), routes, the OpenAPI document at /openapi.json (every route in
// it, each with an operationId), and the error mapping ({code, message,
// details} with the error's HTTP status) for every route.
import { OpenAPIHono, createRoute, z } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import { NotFoundError, OffshootError, toOffshootError } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { LocalHostInfo } from '../agent/index.ts';
import type { FabricService, Fleet, StorageService, VmEngine } from '../vm/index.ts';
import { fabricRoutes } from './fabric-routes.ts';
import { hostRoutes } from './host-routes.ts';
import { groupRoutes } from './group-routes.ts';
import { migrationPolicyRoutes } from './migration-policy-routes.ts';
import { migrateRoutes } from './migrate-routes.ts';
import { bearerAuth } from './auth.ts';
import { mountConsole } from './console-route.ts';
import { mountEvents } from './events-route.ts';
import { mountMetrics } from './metrics.ts';
import type { DaemonMetrics } from './metrics.ts';
import { errorResponses, hostSchema } from './schemas.ts';
import { mobilityRoutes } from './mobility-routes.ts';
import { storageRoutes } from './storage-routes.ts';
import { taskRoutes } from './task-routes.ts';
import { validationHook } from './validation.ts';
import { vmRoutes } from './vm-routes.ts';

export const API_VERSION = '0.1.0';

/** Large enough for an exec's 16 MiB input in base64 and a fork's 1 MiB customize script. */
const MAX_BODY_BYTES = 32 * 1024 * 1024;

/** A request body, when there is one, must be JSON: anything else is 415 before any handler reads it. */
const requireJsonBody: MiddlewareHandler = async (c, next) => {
  const hasBody = (c.req.header('content-length') ?? '0') !== '0' || c.req.header('transfer-encoding') !== undefined;
  const type = c.req.header('content-type') ?? '';
  if (hasBody && !/^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/i.test(type)) {
    throw new OffshootError('UNSUPPORTED_MEDIA_TYPE', `request bodies must be JSON (content-type application/json), not ${type || 'untyped'}`, { contentType: type }, 415);
  }
  return next();
};

const healthRoute = createRoute({
  operationId: 'health',
  method: 'get',
  path: '/health',
  tags: ['host'],
  summary: 'Whether the daemon answers (no token needed)',
  security: [],
  responses: { 200: { description: 'the daemon answers', content: { 'application/json': { schema: z.object({ ok: z.boolean(), version: z.string() }) } } } },
});
const hostRoute = createRoute({
  operationId: 'getHost',
  method: 'get',
  path: '/host',
  tags: ['host'],
  summary: 'This host: accelerator, QEMU version, allowed folders and how QEMU is confined',
  responses: { 200: { description: 'the host', content: { 'application/json': { schema: hostSchema } } }, ...errorResponses },
});

export interface AppDeps {
  engine: VmEngine;
  storage: StorageService;
  /** Templates, their pools and claims (absent: no /templates routes). */
  fabric?: FabricService;
  fleet: Fleet;
  /** This machine's own host, for GET /host (absent on a controller started with --no-local-host). */
  localHostInfo?: () => Promise<LocalHostInfo>;
  token: string;
  /** Other valid tokens (the inventory's API tokens). */
  verifyToken?: (token: string) => Promise<boolean>;
  logger: Logger;
  /** GET /metrics when given. */
  metrics?: DaemonMetrics;
  /** The built web console (default dist/console of this checkout). */
  consoleDir?: string;
}

export function buildApp({ engine, storage, fabric, fleet, localHostInfo, token, verifyToken, logger, metrics, consoleDir }: AppDeps): OpenAPIHono {
  const app = new OpenAPIHono({ defaultHook: validationHook });
  app.onError((err, c) => {
    // Hono's own 4xx (e.g. a malformed JSON body) is the client's mistake, not an internal error.
    const error = err instanceof HTTPException && err.status < 500 ? new OffshootError('INVALID_INPUT', err.message, {}, err.status) : toOffshootError(err);
    if (error.status >= 500) logger.error({ err, code: error.code, path: c.req.path }, 'request failed');
    return c.json(error.toJSON(), error.status as 400);
  });
  app.notFound((c) => c.json(new NotFoundError('route', `${c.req.method} ${c.req.path}`).toJSON(), 404));
  // Before the token check: the console's static files hold no data; its API calls carry the token.
  mountConsole(app, consoleDir);
  app.use('*', bearerAuth(token, ['/health', '/openapi.json'], verifyToken));
  app.use('*', bodyLimit({ maxSize: MAX_BODY_BYTES, onError: () => { throw new OffshootError('PAYLOAD_TOO_LARGE', `request bodies are limited to ${MAX_BODY_BYTES} bytes`, { maxBytes: MAX_BODY_BYTES }, 413); } }));
  app.use('*', requireJsonBody);

  app.openapi(healthRoute, (c) => c.json({ ok: true, version: API_VERSION }, 200));
  app.openapi(hostRoute, async (c) => {
    if (!localHostInfo) throw new OffshootError('NOT_FOUND', 'this controller runs no host of its own (--no-local-host); see GET /hosts', { kind: 'host', ref: 'local' }, 404);
    return c.json(await localHostInfo(), 200);
  });
  app.route('/', hostRoutes(fleet));
  app.route('/', vmRoutes(engine));
  app.route('/', migrateRoutes(engine));
  app.route('/', groupRoutes(engine));
  app.route('/', migrationPolicyRoutes(engine));
  app.route('/', taskRoutes(engine));
  app.route('/', storageRoutes(storage, engine));
  if (fabric) app.route('/', fabricRoutes(fabric, engine));
  app.route('/', mobilityRoutes(storage));
  mountEvents(app, engine);
  if (metrics) mountMetrics(app, metrics);

  app.openAPIRegistry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer' });
  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: { title: 'Offshoot API', version: API_VERSION, description: 'Fork, clone, checkpoint and move QEMU virtual machines.' },
    security: [{ bearer: [] }],
  });
  return app;
}
