// The typed client of the hosts API. It rides on OffshootClient's authenticated requests.
import type { OffshootClient } from './client.ts';
import type { HostState } from '../vm/index.ts';

const enc = encodeURIComponent;

export interface HostListItem {
  id: string;
  name: string;
  url: string;
  state: HostState;
  stateReason: string | null;
  epoch: number;
  protocolVersion: number;
  capabilities: string[];
  facts: Record<string, unknown> | null;
  lastSeenAt: string | null;
  leaseExpiresAt: string | null;
  vms: number;
  memory: { freeBytes: number; totalBytes: number } | null;
  createdAt: string;
  updatedAt: string;
}

export class HostClient {
  constructor(private readonly client: OffshootClient) {}

  list(): Promise<HostListItem[]> {
    return this.client.call('GET', '/hosts');
  }
  get(ref: string): Promise<HostListItem> {
    return this.client.call('GET', `/hosts/${enc(ref)}`);
  }
  add(name: string, url: string, token: string): Promise<HostListItem> {
    return this.client.call('POST', '/hosts', { name, url, token });
  }
  drain(ref: string): Promise<HostListItem> {
    return this.client.call('POST', `/hosts/${enc(ref)}/drain`);
  }
  maintenance(ref: string): Promise<HostListItem> {
    return this.client.call('POST', `/hosts/${enc(ref)}/maintenance`);
  }
  ready(ref: string): Promise<HostListItem> {
    return this.client.call('POST', `/hosts/${enc(ref)}/ready`);
  }
  remove(ref: string): Promise<HostListItem> {
    return this.client.call('DELETE', `/hosts/${enc(ref)}`);
  }
}
