// The typed client of the fabric API: templates, their pools and claims. It
// rides on OffshootClient's authenticated requests.
import type { OffshootClient } from './client.ts';
import type { ClaimRequest, ClaimResult, CreateTemplateRequest, PlaceTemplateRequest, ScaleTemplateRequest, TaskRecord, TemplateAndTask, TemplateView } from '../vm/index.ts';

const enc = encodeURIComponent;

export class FabricClient {
  constructor(private readonly client: OffshootClient) {}

  listTemplates(): Promise<TemplateView[]> {
    return this.client.call('GET', '/templates');
  }
  getTemplate(ref: string): Promise<TemplateView> {
    return this.client.call('GET', `/templates/${enc(ref)}`);
  }
  /** Starts the creation; the answer has its task (or the ended task with wait). */
  createTemplate(request: CreateTemplateRequest, wait = false): Promise<TemplateAndTask & { task?: TaskRecord }> {
    return this.client.call('POST', `/templates${wait ? '?wait=true' : ''}`, request);
  }
  /** Starts carrying the template to another host; the answer has its task (or the ended task with wait). */
  placeTemplate(ref: string, request: PlaceTemplateRequest, wait = false): Promise<TemplateAndTask & { task?: TaskRecord }> {
    return this.client.call('POST', `/templates/${enc(ref)}/place${wait ? '?wait=true' : ''}`, request);
  }
  deleteTemplate(ref: string, force = false): Promise<TemplateView> {
    return this.client.call('DELETE', `/templates/${enc(ref)}${force ? '?force=true' : ''}`);
  }
  /** With wait, answers once the pools are refilled. */
  scaleTemplate(ref: string, request: ScaleTemplateRequest, wait = false): Promise<TemplateView> {
    return this.client.call('POST', `/templates/${enc(ref)}/scale${wait ? '?wait=true' : ''}`, request);
  }
  claim(ref: string, request: ClaimRequest = {}): Promise<ClaimResult> {
    return this.client.call('POST', `/templates/${enc(ref)}/claim`, request);
  }
}
