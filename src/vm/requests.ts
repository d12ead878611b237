// Validated requests for VM operations other than create: exec and console.
import { z } from 'zod';
import { InvalidInputError } from '../common/index.ts';

export const execRequestSchema = z.strictObject({
  path: z.string().min(1).max(4096).describe('program to run in the guest (searched in the guest PATH)'),
  args: z.array(z.string().max(65536)).max(1024).default([]),
  input: z.string().max(16 * 1024 * 1024).optional().describe('standard input, base64'),
  env: z.array(z.string().max(65536)).max(256).optional(),
  timeoutMs: z.number().int().min(1).max(3_600_000).default(60_000),
});
export type ExecVmRequest = z.output<typeof execRequestSchema>;

export const startRequestSchema = z.strictObject({
  timeoutMs: z.number().int().min(1_000).max(3_600_000).optional().describe('how long to wait for the guest agent to answer (default 120000); a guest created with guestAgent: false does not wait'),
});

export const stopRequestSchema = z.strictObject({
  timeoutMs: z.number().int().min(0).max(600_000).default(30_000).describe('how long to wait for the ACPI power-down before killing QEMU'),
});

/** Parses `input` with `schema`, turning zod issues into one INVALID_INPUT error. */
export function parseRequest<S extends z.ZodType>(what: string, schema: S, input: unknown): z.output<S> {
  const result = schema.safeParse(input ?? {});
  if (!result.success) {
    const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
    throw new InvalidInputError(`invalid ${what}: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, { issues });
  }
  return result.data;
}
