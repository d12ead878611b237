// What a checkpoint and a restore are asked for.
import { z } from 'zod';
import { NAME_PATTERN } from '../../common/index.ts';

export const checkpointRequestSchema = z.strictObject({
  name: z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_"').optional().describe('default: VM-TIMESTAMP'),
  out: z.string().min(2).max(4096).refine((p) => p.startsWith('/'), 'must be an absolute path').optional().describe('where to write the file (default: $OFFSHOOT_HOME/checkpoints/NAME.ckpt)'),
  stop: z.boolean().default(false).describe('power the VM off after the save (suspend)'),
});

export const restoreRequestSchema = z.strictObject({
  checkpoint: z.string().min(1).max(4096).describe("a checkpoint's name or id, or the absolute path of a checkpoint file (also one carried from another machine: it is validated, and the frozen disks it names must exist here)"),
  name: z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_"').optional(),
  host: z.string().min(1).max(128).optional().describe('for a checkpoint file given by path: the host it is on (default: the controller\'s own)'),
  mode: z.enum(['eager', 'lazy']).default('lazy').describe('lazy: the VM runs first and its memory streams in from the file (the restore task ends when the file is no longer needed); eager: all memory is loaded before it runs'),
});

export type CheckpointRequest = z.input<typeof checkpointRequestSchema>;
export type RestoreRequest = z.input<typeof restoreRequestSchema>;
