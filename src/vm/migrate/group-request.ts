// What a user asks for when migrating several VMs together (POST /migrations,
// `offshoot vm migrate A B C --to HOST`): the members with their destination,
// the mode, and the tuning every member's source gets (the single migration's
// options less post-copy: a member in post-copy has switched already, so a
// group never uses it).
import { z } from 'zod';
import { InvalidInputError } from '../../common/index.ts';
import type { MigrationTuning } from '../../protocol/index.ts';
import { migrateRequestSchema, tuningOf } from './migrate-request.ts';

export const GROUP_MODES = ['consistent', 'available'] as const;
export type GroupMode = (typeof GROUP_MODES)[number];

export const groupMemberSchema = z.strictObject({
  vm: z.string().min(1).max(128).describe('the VM (name or id)'),
  to: z.string().min(1).max(128).describe('its destination host (name or id)'),
});

export const groupMigrateRequestSchema = migrateRequestSchema
  .omit({ to: true, host: true, postcopy: true })
  .extend({
    members: z.array(groupMemberSchema).min(1).max(32).describe('the VMs that move together, each with its destination'),
    downtimeLimitMs: z.number().int().min(1).max(600_000).default(150).describe("the longest stop QEMU plans for at each member's switch-over (a group's default is lower than a single migration's: the barrier and the group's start add to every member's stop)"),
    autoConverge: z.boolean().default(true).describe("throttle a member's vCPUs while its guest dirties memory faster than it is sent, so it converges with the others (a group's default: on, unless a migration policy says otherwise)"),
    mode: z.enum(GROUP_MODES).default('consistent').describe('consistent: all members move or none (default); available: the members that reached their switch-over move, the others stay'),
    windowMs: z.number().int().min(50).max(600_000).default(150).describe("how close the members' arrivals at their switch-over are aimed (each member's last run starts when the longest still on its way needs no more than its own plus this)"),
    multifdChannels: z.number().int().min(1).max(16).default(1).describe("parallel channels for each member's memory (a group's default is one: with several, QEMU 7.2 sends a member braked by the pacer a batch of pages each rate period, ~5 MB/s, and it cannot wait past its first pass)"),
  })
  .strict();
export type GroupMigrateRequest = z.output<typeof groupMigrateRequestSchema>;

/** The tuning of every member (post-copy never: a group holds each member at its pre-switchover point). */
export function groupTuningOf(request: GroupMigrateRequest): MigrationTuning {
  const names = request.members.map((m) => m.vm);
  const twice = names.find((n, i) => names.indexOf(n) !== i);
  if (twice) throw new InvalidInputError(`VM "${twice}" is named twice in the group`, { vm: twice });
  return tuningOf({ ...request, postcopy: 'never' });
}
