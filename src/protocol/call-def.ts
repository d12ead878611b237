// How a call of the agent protocol is declared (for the calls files that
// extend AGENT_CALLS, e.g. calls-fabric.ts): a plain `call` answers at once;
// an `operation` answers with an operation the caller follows, and its request
// always carries the caller-chosen operation id.
import { z } from 'zod';
import { operationIdSchema } from './schemas.ts';

export interface CallDef<Req extends z.ZodType, Res extends z.ZodType> {
  kind: 'call' | 'operation';
  request: Req;
  result: Res;
  summary: string;
  /** Whether a retry after a lost answer is harmless without an idempotency key (reads). */
  readOnly?: boolean;
}

export function call<Req extends z.ZodType, Res extends z.ZodType>(summary: string, request: Req, result: Res, readOnly = false): CallDef<Req, Res> {
  return { kind: 'call', request, result, summary, readOnly };
}

export function operation<Shape extends z.ZodRawShape, Res extends z.ZodType>(summary: string, shape: Shape, result: Res) {
  return { kind: 'operation' as const, request: z.object({ operationId: operationIdSchema, ...shape }), result, summary, readOnly: false };
}
