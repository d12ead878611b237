// What a checkpoint and a restore are asked for.
import { z } from 'zod';
import { NAME_PATTERN } from '../../common/index.ts';

export const checkpointRequestSchema = z.strictObject({
  name: z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_"').optional().describe('default: VM-TIMESTAMP'),
  out: z.string().min(2).max(4096).refine((p) => p.startsWith('/'), 'must be an absolute path').optional().describe('where to write the file (default: $OFFSHOOT_HOME/checkpoints/NAME.ckpt)'),
  stop: z.boolean().default(false).describe('power the VM off after the save (suspend)'),
});

export const restoreRequestSchema = z.strictObject({
  checkpoint: z.string().min(1).max(4096).describe("a checkpoint's name or id, or the path of a checkpoint file this host knows"),
  name: z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_"').optional(),
  mode: z.enum(['eager', 'lazy']).default('eager').describe('lazy restore is not implemented yet'),
});

export type CheckpointRequest = z.input<typeof checkpointRequestSchema>;
export type RestoreRequest = z.input<typeof restoreRequestSchema>;
