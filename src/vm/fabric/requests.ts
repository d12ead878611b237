// What the fabric's commands accept, as zod schemas (the API's OpenAPI
// document uses the same): creating a template, scaling its
// pools, claiming a child. A template's name leaves room for its pool
// children's names (NAME-xxxxxx).
import { z } from 'zod';
import { InvalidInputError } from '../../common/index.ts';
import { parseSizeMiB, vmNameSchema } from '../spec.ts';

export const MAX_POOL_READY = 64;
export const DEFAULT_CLAIM_TIMEOUT_MS = 60_000;

export const templateNameSchema = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$/, 'use 1-41 letters, digits, "-" or "_", starting with a letter or digit');
const hostRef = z.string().min(1).max(128);
const memorySize = z.union([z.string().max(32), z.number().int().positive()]).transform((v, ctx) => {
  try {
    const mib = parseSizeMiB(v);
    if (mib < 1) throw new InvalidInputError(`a memory budget of ${mib} MiB is too small`, {});
    return mib * 2 ** 20;
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
});

export const createTemplateRequestSchema = z.strictObject({
  name: templateNameSchema,
  from: z.string().min(1).max(128).describe('the running (or paused) VM to make the parent template of, by name or id; it runs on'),
  hosts: z.array(hostRef).max(32).optional().describe('other hosts to place it on as well (carried there once made; the creation fails, leaving nothing, if one cannot be)'),
});
export type CreateTemplateRequest = z.input<typeof createTemplateRequestSchema>;

export const placeTemplateRequestSchema = z.strictObject({
  host: hostRef.describe('the host to carry the template to (its memory as a checkpoint file, its missing bases and boot files copied)'),
});
export type PlaceTemplateRequest = z.input<typeof placeTemplateRequestSchema>;

export const scaleTemplateRequestSchema = z.strictObject({
  ready: z.number().int().min(0).max(MAX_POOL_READY).describe('ready children to keep on each host (or on `host`)'),
  host: hostRef.optional().describe('scale the pool of this host only (default: every host the template is placed on)'),
  warm: z.boolean().optional().describe('children run idle instead of paused (a claim skips the resume; they use CPU meanwhile)'),
  maxMemory: z.union([memorySize, z.null()]).optional().describe('the most host memory the pool may hold on a host, e.g. "2G" (null: no budget)'),
});
export type ScaleTemplateRequest = z.input<typeof scaleTemplateRequestSchema>;

const envEntry = z.string().max(65536).regex(/^[A-Za-z_][A-Za-z0-9_]*=/, 'KEY=VALUE, the key letters, digits and "_"');

export const claimRequestSchema = z.strictObject({
  name: vmNameSchema.optional().describe("the claimed VM's name (default: the pool child's)"),
  hostname: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9-]{0,62}$/, 'a hostname: 1-63 letters, digits or "-"').optional().describe('its hostname (default: its name)'),
  customize: z.string().max(1024 * 1024).optional().describe('a shell script run in the child (sh -s) once its identity is set; its output is in the result'),
  sshKey: z.string().max(16 * 1024).regex(/^[^\n]+\n?$/, 'one public key line').optional().describe("a public key added to root's authorized_keys"),
  env: z.array(envEntry).max(256).optional().describe('KEY=VALUE pairs: exported to the script and kept in /etc/offshoot/claim.env'),
  host: hostRef.optional().describe('take a child on this host (default: any host the template is ready on)'),
  timeoutMs: z.number().int().min(1_000).max(600_000).default(DEFAULT_CLAIM_TIMEOUT_MS).describe('how long the guest step may take'),
});
export type ClaimRequest = z.input<typeof claimRequestSchema>;
export type ParsedClaimRequest = z.output<typeof claimRequestSchema>;

export const deleteTemplateRequestSchema = z.strictObject({ force: z.boolean().default(false).describe('also remove its pools and leave its claimed children running on their own') });
