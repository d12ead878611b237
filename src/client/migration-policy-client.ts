// The typed client of migration policies and host drains (GET/PATCH
// /migration-policies, DELETE /migration-policies/hosts/{ref}, POST
// /hosts/{ref}/evacuate). It rides on OffshootClient's authenticated requests.
import type { DrainRequest, PolicyView, TaskRecord } from '../vm/index.ts';
import type { OffshootClient } from './client.ts';

const enc = encodeURIComponent;
const hostQuery = (host?: string) => (host ? `?host=${enc(host)}` : '');

export class MigrationPolicyClient {
  constructor(private readonly client: OffshootClient) {}

  show(host?: string): Promise<PolicyView> {
    return this.client.call('GET', `/migration-policies${hostQuery(host)}`);
  }

  /** Sets fields of the fleet's policy, or of a host's override; null removes a field. */
  set(host: string | undefined, patch: Record<string, unknown>): Promise<PolicyView> {
    return this.client.call('PATCH', `/migration-policies${hostQuery(host)}`, patch);
  }

  clear(host: string): Promise<PolicyView> {
    return this.client.call('DELETE', `/migration-policies/hosts/${enc(host)}`);
  }

  /** Sets the host draining and starts the task that live-migrates its VMs off. */
  drain(host: string, request: DrainRequest = {}): Promise<{ task: TaskRecord }> {
    return this.client.call('POST', `/hosts/${enc(host)}/evacuate`, request);
  }
}
