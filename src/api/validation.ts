// Turns a failed request validation into the API's error shape (INVALID_INPUT
// with each issue's path and message), the same as the engine's own checks;
// and reads an optional JSON body for the engine to validate.
import type { Hook } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { InvalidInputError } from '../common/index.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const validationHook: Hook<any, any, any, any> = (result) => {
  if (!result.success) {
    const issues = result.error.issues.map((i: { path: PropertyKey[]; message: string }) => ({ path: i.path.map(String).join('.'), message: i.message }));
    throw new InvalidInputError(`invalid request: ${issues.map((i: { path: string; message: string }) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, { issues });
  }
  return undefined;
};

/** The body of a route whose JSON body is optional (the engine validates it); {} without one. */
export function optionalJsonBody(c: Context): Promise<unknown> {
  return c.req.header('content-type')?.includes('json') ? c.req.json() : Promise.resolve({});
}
