// What a user asks for when migrating a VM to another host (POST
// /vms/{ref}/migrate, `offshoot vm migrate NAME --to HOST`), validated with
// zod, and the tuning the source's agent gets from it. Rates accept "500M"
// (bytes per second, binary units) or a number of bytes per second.
import { z } from 'zod';
import { InvalidInputError } from '../../common/index.ts';
import type { MigrationTuning } from '../../protocol/index.ts';

const RATE_PATTERN = /^(\d+(?:\.\d+)?)\s*([KMGT])?i?B?(?:\/s)?$/i;

/** "500M", "1G", "1.5G/s" or a number of bytes per second, in bytes per second. */
export function parseRate(input: string | number): number {
  if (typeof input === 'number') return input;
  const match = RATE_PATTERN.exec(input.trim());
  if (!match) throw new InvalidInputError(`invalid rate "${input}": use e.g. 500M or 1G (bytes per second)`, { rate: input });
  const factor: Record<string, number> = { K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };
  return Math.round(Number(match[1]) * (factor[(match[2] ?? '').toUpperCase()] ?? 1));
}

export const migrateRequestSchema = z.strictObject({
  to: z.string().min(1).max(128).optional().describe('the destination host (name or id)'),
  host: z.string().min(1).max(128).optional().describe('the destination host: another name for `to`'),
  maxBandwidth: z.union([z.string().max(32), z.number().int().positive()]).default('4G').describe('bandwidth cap of memory and disk mirrors, e.g. "500M" (bytes per second)'),
  downtimeLimitMs: z.number().int().min(1).max(600_000).default(300).describe('the longest stop QEMU plans for at the switch-over'),
  postcopy: z.enum(['auto', 'never', 'always']).default('auto').describe('post-copy: when pre-copy stops converging (auto), never, or always'),
  autoConverge: z.boolean().default(false).describe("throttle the guest's vCPUs while it dirties memory faster than it can be sent"),
  timeoutS: z.number().int().min(1).max(24 * 3600).default(600).describe('the time budget: a pre-copy that has not converged by then is stopped (the VM runs on at its source)'),
  storage: z.enum(['auto', 'shared', 'copy']).default('auto').describe('disks: kept where both hosts see them and copied otherwise (auto), all kept (shared), all copied (copy)'),
  tls: z.boolean().default(true).describe('TLS with a one-time key on the migration and NBD streams'),
  multifdChannels: z.number().int().min(1).max(16).default(2).describe('parallel channels for memory (when post-copy is off: QEMU 7.2 cannot combine them)'),
  bases: z
    .strictObject({
      datastoreId: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/).optional().describe('only copies of the bases in this datastore of the destination (its id) are used; a disk whose chain is held elsewhere there is sent whole'),
      verify: z.boolean().default(false).describe("hash each copy of a base the destination holds by content id and compare it with the source's; one whose bytes differ is not used"),
    })
    .optional()
    .describe("copied disks whose bases the destination holds by content id (seeded ahead, `disk seed`) go over the destination's copies; how those copies are chosen (`vm move --datastore/--verify`)"),
});
export type MigrateRequest = z.output<typeof migrateRequestSchema>;

/** The destination host a request names (`to`, or `host`). */
export function destinationOf(request: MigrateRequest): string {
  const to = request.to ?? request.host;
  if (!to) throw new InvalidInputError('invalid migrate request: to: name the destination host', { issues: [{ path: 'to', message: 'required' }] });
  return to;
}

export function tuningOf(request: MigrateRequest): MigrationTuning {
  const maxBandwidthBytesPerSecond = parseRate(request.maxBandwidth);
  if (maxBandwidthBytesPerSecond < 2 ** 20) throw new InvalidInputError(`maxBandwidth ${request.maxBandwidth} is below 1 MiB/s`, { maxBandwidth: request.maxBandwidth });
  return { maxBandwidthBytesPerSecond, downtimeLimitMs: request.downtimeLimitMs, postcopy: request.postcopy, autoConverge: request.autoConverge, multifdChannels: request.multifdChannels, timeoutMs: request.timeoutS * 1000, tls: request.tls };
}
