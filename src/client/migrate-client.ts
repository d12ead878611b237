// The typed client of live migration (POST /vms/{ref}/migrate, and POST /migrations for a group). It rides on OffshootClient's authenticated requests.
import type { GroupMigrateRequest, MigrateRequest, TaskRecord } from '../vm/index.ts';
import type { OffshootClient, VmAndTaskView } from './client.ts';

export class MigrateClient {
  constructor(private readonly client: OffshootClient) {}

  /** Starts a migration; the answer carries its task (follow it with waitTask, cancel it with cancelTask). */
  migrate(ref: string, request: Partial<MigrateRequest>): Promise<VmAndTaskView> {
    return this.client.call('POST', `/vms/${encodeURIComponent(ref)}/migrate`, request);
  }

  /** Starts a group migration (one switch-over for every member); the answer carries its task. */
  migrateGroup(request: Partial<GroupMigrateRequest> & Pick<GroupMigrateRequest, 'members'>): Promise<{ task: TaskRecord }> {
    return this.client.call('POST', '/migrations', request);
  }
}
