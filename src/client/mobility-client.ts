// The typed client of the mobility API: copy jobs handed between hosts (and,
// with them, what each host copied), disks seeded to another host by content
// id, what a VM's move would skip, and which content ids a host holds. It
// rides on OffshootClient's authenticated requests.
import type { OffshootClient } from './client.ts';
import type { ContentAnswer } from '../protocol/index.ts';
import type { DiskContentPlan, HandoverResult, MoveVmRequest, MoveVmStarted, SeedResult } from '../vm/index.ts';

const enc = encodeURIComponent;

export interface MovePlan {
  vm: string;
  from: string;
  to: string;
  disks: DiskContentPlan[];
  skippedBytes: number;
  sendBytes: number;
}

export class MobilityClient {
  constructor(private readonly client: OffshootClient) {}

  /** Hands a copy job to another host; with wait, answers once the job has ended (or paused). */
  moveJob(id: string, to: string, wait = false): Promise<HandoverResult> {
    return this.client.call('POST', `/jobs/${enc(id)}/move${wait ? '?wait=true' : ''}`, { to });
  }

  /** Seeds a disk's chain to a datastore, or a host's own; with wait, answers once its copy job has ended. */
  seedDisk(ref: string, to: string, options: { verify?: boolean; wait?: boolean } = {}): Promise<SeedResult> {
    return this.client.call('POST', `/disks/${enc(ref)}/seed${options.wait ? '?wait=true' : ''}`, { to, verify: options.verify ?? false });
  }

  movePlan(vm: string, to: string, verify = false): Promise<MovePlan> {
    return this.client.call('POST', `/vms/${enc(vm)}/move-plan`, { to, verify });
  }

  /** Moves a VM to another host (live or cold); answers the plan and the task that moves it. */
  moveVm(vm: string, request: MoveVmRequest): Promise<MoveVmStarted> {
    return this.client.call('POST', `/vms/${enc(vm)}/move`, request);
  }

  /** Which chains of content ids (each top first) a host holds. */
  findContent(host: string, chains: string[][], verify = false): Promise<{ host: string; answers: Array<ContentAnswer & { contentIds: string[] }> }> {
    return this.client.call('POST', `/hosts/${enc(host)}/content`, { chains: chains.map((contentIds) => ({ contentIds })), verify });
  }
}
