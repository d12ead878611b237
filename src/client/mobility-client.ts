// The typed client of the mobility API: copy jobs handed between hosts (and,
// with them, what each host copied). It rides on OffshootClient's
// authenticated requests.
import type { OffshootClient } from './client.ts';
import type { HandoverResult } from '../vm/index.ts';

const enc = encodeURIComponent;

export class MobilityClient {
  constructor(private readonly client: OffshootClient) {}

  /** Hands a copy job to another host; with wait, answers once the job has ended (or paused). */
  moveJob(id: string, to: string, wait = false): Promise<HandoverResult> {
    return this.client.call('POST', `/jobs/${enc(id)}/move${wait ? '?wait=true' : ''}`, { to });
  }
}
