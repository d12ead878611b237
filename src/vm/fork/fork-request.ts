// What a fork is asked for: how many children, their name prefix, an optional
// customization script run in each child, and the chain-depth limit of disk
// state inheritance.
import { z } from 'zod';

export const DEFAULT_MAX_DISK_DEPTH = 4;

export const forkRequestSchema = z.strictObject({
  count: z.number().int().min(1).max(64).default(1).describe('how many children'),
  prefix: z
    .string()
    .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$/, 'use letters, digits, "-" or "_", starting with a letter or digit')
    .optional()
    .describe('children are named PREFIX1, PREFIX2, ... (default: SOURCE-c)'),
  customize: z.string().max(1024 * 1024).optional().describe('a shell script run in each child (sh -s) after its identity is set'),
  customizeTimeoutMs: z.number().int().min(100).max(600_000).default(30_000),
  maxDiskDepth: z.number().int().min(1).max(32).default(DEFAULT_MAX_DISK_DEPTH).describe('deltas above the root image before a child delta is flattened'),
});

export type ForkRequest = z.input<typeof forkRequestSchema>;
export type ParsedForkRequest = z.output<typeof forkRequestSchema>;
