// What a user asks for when creating a VM (CreateVmRequest, validated with zod
// and also used by the API's OpenAPI document) and the resolved, stored form
// the engine runs from (VmSpec). Sizes accept "512M", "1G" or a number of MiB.
import { z } from 'zod';
import { InvalidInputError, NAME_PATTERN } from '../common/index.ts';

const SIZE_PATTERN = /^(\d+)([KMGT]i?B?|B)?$/i;

/** Parses "512M", "1G", "2GiB", "1048576K" or a plain number (MiB) into MiB. */
export function parseSizeMiB(input: string | number): number {
  if (typeof input === 'number') return input;
  const match = SIZE_PATTERN.exec(input.trim());
  if (!match) throw new InvalidInputError(`invalid size "${input}": use e.g. 512M or 2G`, { size: input });
  const value = Number(match[1]);
  const unit = (match[2] ?? 'M').charAt(0).toUpperCase();
  const factor: Record<string, number> = { B: 1 / (1024 * 1024), K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 };
  const mib = value * (factor[unit] ?? 1);
  if (!Number.isInteger(mib)) throw new InvalidInputError(`size "${input}" is not a whole number of MiB`, { size: input });
  return mib;
}

export const MIN_MEMORY_MIB = 64;
export const MAX_MEMORY_MIB = 1024 * 1024;
export const MAX_VCPUS = 64;

const absolutePath = z.string().min(1).max(4096).refine((p) => p.startsWith('/'), 'must be an absolute path');
const memorySize = z.union([z.string().max(32), z.number().int()]);

export const vmNameSchema = z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_", starting with a letter or digit');

export const createVmRequestSchema = z
  .strictObject({
    name: vmNameSchema,
    vcpus: z.number().int().min(1).max(MAX_VCPUS).default(1),
    memory: memorySize.default('256M').describe('guest memory, e.g. "512M", "1G", or a number of MiB'),
    kernel: z
      .strictObject({
        path: absolutePath,
        initrd: absolutePath.optional(),
        cmdline: z.string().max(4096).optional(),
      })
      .optional()
      .describe('boot this kernel instead of the embedded default guest'),
    bootDisk: absolutePath.optional().describe('boot from this disk image (BIOS) instead of a kernel'),
    disks: z
      .array(z.strictObject({ path: absolutePath, readOnly: z.boolean().default(false) }))
      .max(8)
      .default([])
      .describe('extra disk images to attach, in order'),
    network: z.enum(['user', 'none']).default('user'),
    host: z.string().min(1).max(128).optional().describe('the host to place the VM on (name or id; default: a ready host with room)'),
    guestAgent: z.boolean().default(true).describe('false: the guest has no QEMU guest agent (start does not wait for one; exec, and identity changes in the guest, are not possible)'),
    start: z.boolean().default(false).describe('boot the VM and wait until its guest agent answers'),
    startTimeoutMs: z.number().int().min(1_000).max(3_600_000).optional().describe('with start: how long to wait for the guest agent (default 120000)'),
  })
  .refine((r) => !(r.kernel && r.bootDisk), { message: 'give either kernel or bootDisk, not both', path: ['bootDisk'] });

export type CreateVmRequest = z.input<typeof createVmRequestSchema>;
export type ParsedCreateVmRequest = z.output<typeof createVmRequestSchema>;

/** Validates a create request; unknown fields and bad values are INVALID_INPUT with the zod issues as details. */
export function parseCreateVmRequest(input: unknown): ParsedCreateVmRequest {
  const result = createVmRequestSchema.safeParse(input);
  if (!result.success) {
    const issues = result.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
    throw new InvalidInputError(`invalid VM spec: ${issues.map((i) => `${i.path || '(root)'}: ${i.message}`).join('; ')}`, { issues });
  }
  return result.data;
}

export function resolveMemoryMiB(memory: string | number): number {
  const mib = parseSizeMiB(memory);
  if (mib < MIN_MEMORY_MIB || mib > MAX_MEMORY_MIB) {
    throw new InvalidInputError(`memory ${mib} MiB is out of range ${MIN_MEMORY_MIB}..${MAX_MEMORY_MIB} MiB`, { memoryMiB: mib });
  }
  return mib;
}

export type { VmBoot, VmDisk, VmNic, VmSpec } from '../protocol/index.ts';
