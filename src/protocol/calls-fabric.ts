// The elastic fabric's part of the agent protocol (spread into AGENT_CALLS):
// host templates, the host's side of a parent template. A host template is a
// frozen guest (its RAM as a memory template, its device state, the frozen
// files its spec names) from which children can be spawned at any time, with
// no parent running: each child maps the RAM copy-on-write, gets a qcow2 delta
// over each frozen disk and loads the device state, so it continues exactly
// where the parent was frozen. A host template is made from a fork that has
// switched over (keepForkTemplate: the parent may run on, derived from the
// same memory) or from a checkpoint file another host wrote of its template
// (exportTemplate there, importTemplate here). Its folder is
// `home:fabric/<templateId>/`: whatever a controller puts there for the
// template (the checkpoint file that carries its memory) goes with
// removeTemplate; the frozen disks a controller copies to a host it carries
// the template to go into that host's bases, kept by the host template's
// spec and released by garbage collection once nothing uses them. While a host template exists, its
// agent never releases its memory template or the files its spec names, so
// garbage collection cannot break it; once removed, they go when nothing else
// uses them (a claimed child keeps its memory until it ends).
import { z } from 'zod';
import { call, operation } from './call-def.ts';
import { checkpointMetadataSchema, locatorSchema, nameSchema, uuidSchema, vmIdSchema, vmRuntimeSchema, vmSpecSchema } from './schemas.ts';

export const hostTemplateSchema = z.object({
  templateId: uuidSchema,
  /** The memory template (memoryDir/templates/<id>.ram) the children map. */
  memoryTemplateId: uuidSchema,
  memoryBytes: z.number().int().nonnegative(),
  deviceStateBytes: z.number().int().nonnegative(),
});

export const handOutResultSchema = z.object({
  ok: z.boolean(),
  error: z.string().nullable(),
  /** The customisation script's outcome, when one ran. */
  script: z.object({ exitCode: z.number().int().nullable(), stdout: z.string(), stderr: z.string() }).nullable(),
  /**
   * ms: resuming the vCPUs, the guest step (identity, clock, entropy, script), the whole hand-out; inside the
   * guest step (when it ran): getting the guest-agent connection, the identity (hostname, entropy, clock), and
   * for a script its guest-exec round trip, from there until the exit was seen, and the exit polls.
   */
  timings: z.object({ queuedMs: z.number().optional(), resumeMs: z.number(), guestMs: z.number(), totalMs: z.number(), agentMs: z.number().optional(), armed: z.boolean().optional(), identityMs: z.number().optional(), execMs: z.number().optional(), exitMs: z.number().optional(), polls: z.number().int().optional() }),
});

const templateRef = z.object({ templateId: uuidSchema });

export const FABRIC_CALLS = {
  keepForkTemplate: call(
    "keeps a switched-over fork's frozen RAM and device state as a host template (spec: its frozen spec, whose files the template keeps)",
    z.object({ forkId: uuidSchema, templateId: uuidSchema, spec: vmSpecSchema }),
    hostTemplateSchema,
  ),
  spawnFromTemplate: operation(
    'starts a child of a host template: a delta over each frozen disk, its RAM mapping the template copy-on-write, the device state loaded; left running or paused',
    { templateId: uuidSchema, vmId: vmIdSchema, name: nameSchema, spec: vmSpecSchema, run: z.boolean() },
    z.object({ runtime: vmRuntimeSchema, spec: vmSpecSchema }),
  ),
  handOutChild: operation(
    "readies a child for whoever claimed it: resumed if paused, then one guest step sets its hostname, the clock (unless setClock is false: a child that ran since its clock was set) and fresh entropy and runs the customisation script (env, as KEY=VALUE, exported to it); with arm (a pool child's warm-up), leaves a waiter in the guest that makes its next hand-out start no process; reports rather than throws for the guest's sake",
    { vmId: vmIdSchema, resume: z.boolean(), setClock: z.boolean().optional(), arm: z.boolean().optional(), hostname: nameSchema, script: z.string().max(1024 * 1024).optional(), env: z.array(z.string().max(65536)).max(256).optional(), timeoutMs: z.number().int().min(1).max(600_000) },
    handOutResultSchema,
  ),
  exportTemplate: operation('writes a host template (its RAM and device state) into a new checkpoint file, named by metadata.checkpointId when given (removeCheckpoint removes it, or a copy of it, by that id)', { templateId: uuidSchema, file: locatorSchema, metadata: checkpointMetadataSchema }, z.object({ fileBytes: z.number(), storedPages: z.number() })),
  importTemplate: operation(
    'makes a host template from a checkpoint file another host exported: its memory into a new memory template, its device state kept; spec: the template as this host runs it (its files here)',
    { templateId: uuidSchema, checkpoint: locatorSchema, spec: vmSpecSchema },
    hostTemplateSchema,
  ),
  templateStatus: call(
    'whether a host template, its memory and device state, and each of the given files are still there; memoryBytes: what its memory template holds in host memory',
    z.object({ templateId: uuidSchema, files: z.array(locatorSchema).max(256) }),
    z.object({ present: z.boolean(), missing: z.array(z.string()), memoryBytes: z.number().nonnegative().nullable() }),
    true,
  ),
  removeTemplate: call('forgets a host template: its folder goes; its memory template and files are released once nothing uses them', templateRef, z.object({})),
} as const;

export type FabricCallName = keyof typeof FABRIC_CALLS;
export type HostTemplate = z.infer<typeof hostTemplateSchema>;
export type HandOutResult = z.infer<typeof handOutResultSchema>;

/** The reference of a file in a host template's folder (`home:fabric/<templateId>/<name>`), where a controller copies what the template needs. */
export function templateFolderFile(templateId: string, name: string): string {
  return `home:fabric/${templateId}/${name}`;
}

