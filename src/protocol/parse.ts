// Validation at the protocol's edges: a request or result that does not match
// its schema becomes one INVALID_INPUT (a request) or AGENT_PROTOCOL (a result
// from an agent) error listing each issue.
import type { z } from 'zod';
import { OffshootError } from '../common/index.ts';

function describe(error: z.ZodError): { issues: { path: string; message: string }[]; text: string } {
  const issues = error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
  return { issues, text: issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ') };
}

export function parseWith<S extends z.ZodType>(what: string, schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input ?? {});
  if (!result.success) {
    const { issues, text } = describe(result.error);
    throw new OffshootError('INVALID_INPUT', `invalid ${what}: ${text}`, { issues }, 400);
  }
  return result.data;
}

/** A result an agent sent that does not match the protocol: the agent is not one this controller can speak to. */
export function parseAnswer<S extends z.ZodType>(host: string, what: string, schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input);
  if (!result.success) {
    const { issues, text } = describe(result.error);
    throw new OffshootError('AGENT_PROTOCOL', `host ${host} answered ${what} with data this controller does not understand: ${text}`, { host, issues }, 502);
  }
  return result.data;
}
