// The agent protocol over HTTP, server side: `POST /v1/<call>` with the
// request as JSON and the result (or a wire error with its HTTP status) as
// JSON, every route but /v1/health behind the host's bearer token (compared
// in constant time), the caller's host epoch in `x-offshoot-epoch` and an
// idempotency key in `idempotency-key`. The OpenAPI document at
// /v1/openapi.json is generated from the same schemas that validate the calls.
import { timingSafeEqual } from 'node:crypto';
import { OpenAPIHono, createRoute } from '@hono/zod-openapi';
import { HTTPException } from 'hono/http-exception';
import { z } from 'zod';
import { OffshootError, UnauthorizedError, statusOf } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { AGENT_CALLS, operationInfoSchema } from './calls.ts';
import type { CallName } from './calls.ts';
import type { AgentEndpoint } from './endpoint.ts';
import { PROTOCOL_VERSION } from './version.ts';
import { toWireError, wireErrorSchema } from './wire-error.ts';

export const EPOCH_HEADER = 'x-offshoot-epoch';
export const IDEMPOTENCY_HEADER = 'idempotency-key';
export const PROTOCOL_HEADER = 'x-offshoot-protocol';

function checkToken(expected: string, header: string | undefined): void {
  const match = /^Bearer\s+(.+)$/i.exec(header ?? '');
  const given = Buffer.from(match?.[1]?.trim() ?? '');
  const want = Buffer.from(expected);
  if (given.length !== want.length || !timingSafeEqual(given, want)) throw new UnauthorizedError('missing or invalid host credential');
}

export function agentHttpApp(endpoint: AgentEndpoint, options: { token: string; logger?: Logger }): OpenAPIHono {
  const app = new OpenAPIHono();
  app.onError((err, c) => {
    const wire = err instanceof HTTPException && err.status < 500 ? { code: 'INVALID_INPUT', message: err.message, details: {} } : toWireError(err);
    const status = err instanceof HTTPException && err.status < 500 ? err.status : statusOf(wire.code);
    if (status >= 500) options.logger?.error({ err, code: wire.code, path: c.req.path }, 'agent call failed');
    return c.json(wire, status as 400);
  });
  app.notFound((c) => c.json({ code: 'NOT_FOUND', message: `no route ${c.req.method} ${c.req.path}`, details: {} }, 404));
  app.get('/v1/health', (c) => c.json({ ok: true, protocolVersion: PROTOCOL_VERSION }));
  app.use('/v1/*', async (c, next) => {
    if (c.req.path === '/v1/health' || c.req.path === '/v1/openapi.json') return next();
    checkToken(options.token, c.req.header('authorization'));
    return next();
  });

  const errors = { default: { description: 'an error with a stable code', content: { 'application/json': { schema: wireErrorSchema } } } };
  for (const name of Object.keys(AGENT_CALLS) as CallName[]) {
    const def = AGENT_CALLS[name];
    const result = def.kind === 'operation' ? operationInfoSchema : def.result;
    app.openAPIRegistry.registerPath(
      createRoute({
        method: 'post',
        path: `/v1/${name}`,
        operationId: name,
        tags: [def.kind === 'operation' ? 'operations' : 'calls'],
        summary: def.summary,
        request: { body: { required: true, content: { 'application/json': { schema: def.request as z.ZodType } } } },
        responses: { 200: { description: def.kind === 'operation' ? 'the operation (follow it with getOperation)' : 'the result', content: { 'application/json': { schema: result as z.ZodType } } }, ...errors },
      }),
    );
  }
  app.post('/v1/:call', async (c) => {
    if (!(c.req.header('content-type') ?? '').includes('application/json')) throw new OffshootError('UNSUPPORTED_MEDIA_TYPE', 'agent calls take application/json', {}, 415);
    const body: unknown = await c.req.json().catch(() => {
      throw new OffshootError('INVALID_INPUT', 'the request body is not JSON', {}, 400);
    });
    const epochHeader = c.req.header(EPOCH_HEADER);
    const epoch = epochHeader === undefined ? undefined : Number(epochHeader);
    if (epoch !== undefined && !Number.isInteger(epoch)) throw new OffshootError('INVALID_INPUT', `${EPOCH_HEADER} must be an integer`, {}, 400);
    const answer = await endpoint.dispatch(c.req.param('call'), body, { epoch, idempotencyKey: c.req.header(IDEMPOTENCY_HEADER) });
    c.header(PROTOCOL_HEADER, String(PROTOCOL_VERSION));
    return c.json((answer ?? {}) as object, 200);
  });
  app.openAPIRegistry.registerComponent('securitySchemes', 'hostToken', { type: 'http', scheme: 'bearer' });
  app.doc31('/v1/openapi.json', {
    openapi: '3.1.0',
    info: { title: 'Offshoot host agent', version: String(PROTOCOL_VERSION), description: 'The protocol between an Offshoot control plane and the agent on each host.' },
    security: [{ hostToken: [] }],
  });
  return app;
}

