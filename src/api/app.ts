// Builds the HTTP application: auth, routes, the OpenAPI document at
// /openapi.json, and the error mapping ({code, message, details} with the
// error's HTTP status) for every route.
import { OpenAPIHono } from '@hono/zod-openapi';
import { HTTPException } from 'hono/http-exception';
import { NotFoundError, OffshootError, toOffshootError } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import type { HostAgent } from '../agent/index.ts';
import type { StorageService, VmEngine } from '../vm/index.ts';
import { bearerAuth } from './auth.ts';
import { mountConsole } from './console-route.ts';
import { mountEvents } from './events-route.ts';
import { mountMetrics } from './metrics.ts';
import type { DaemonMetrics } from './metrics.ts';
import { storageRoutes } from './storage-routes.ts';
import { taskRoutes } from './task-routes.ts';
import { validationHook } from './validation.ts';
import { vmRoutes } from './vm-routes.ts';

export const API_VERSION = '0.1.0';

export interface AppDeps {
  engine: VmEngine;
  storage: StorageService;
  agent: HostAgent;
  token: string;
  /** Other valid tokens (the inventory's API tokens). */
  verifyToken?: (token: string) => Promise<boolean>;
  logger: Logger;
  /** GET /metrics when given. */
  metrics?: DaemonMetrics;
  /** The built web console (default dist/console of this checkout). */
  consoleDir?: string;
}

export function buildApp({ engine, storage, agent, token, verifyToken, logger, metrics, consoleDir }: AppDeps): OpenAPIHono {
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

  app.get('/health', (c) => c.json({ ok: true, version: API_VERSION }));
  app.get('/host', async (c) => c.json(await agent.hostInfo()));
  app.route('/', vmRoutes(engine));
  app.route('/', taskRoutes(engine));
  app.route('/', storageRoutes(storage, engine));
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
