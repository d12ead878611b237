// The typed client of live migration (POST /vms/{ref}/migrate). It rides on OffshootClient's authenticated requests.
import type { MigrateRequest } from '../vm/index.ts';
import type { OffshootClient, VmAndTaskView } from './client.ts';

export class MigrateClient {
  constructor(private readonly client: OffshootClient) {}

  /** Starts a migration; the answer carries its task (follow it with waitTask, cancel it with cancelTask). */
  migrate(ref: string, request: Partial<MigrateRequest>): Promise<VmAndTaskView> {
    return this.client.call('POST', `/vms/${encodeURIComponent(ref)}/migrate`, request);
  }
}
