// Turns a failed request validation into the API's error shape (INVALID_INPUT
// with each issue's path and message), the same as the engine's own checks.
import type { Hook } from '@hono/zod-openapi';
import { InvalidInputError } from '../common/index.ts';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const validationHook: Hook<any, any, any, any> = (result) => {
  if (!result.success) {
    const issues = result.error.issues.map((i: { path: PropertyKey[]; message: string }) => ({ path: i.path.map(String).join('.'), message: i.message }));
    throw new InvalidInputError(`invalid request: ${issues.map((i: { path: string; message: string }) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, { issues });
  }
  return undefined;
};
