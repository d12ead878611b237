// Validated requests of the host commands (the API's OpenAPI document uses the same schemas).
import { z } from 'zod';
import { NAME_PATTERN } from '../../common/index.ts';

export const addHostRequestSchema = z.strictObject({
  name: z.string().regex(NAME_PATTERN, 'use 1-63 letters, digits, "-" or "_"'),
  url: z.string().min(8).max(512).describe("the agent's address, e.g. http://10.0.0.5:7100"),
  token: z.string().min(32).max(256).describe("the agent's credential (its home's agent-token file)"),
});
export type AddHostRequest = z.output<typeof addHostRequestSchema>;
