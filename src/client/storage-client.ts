// The typed client of the storage API: datastores, disks, clones, flatten,
// pools and copy jobs. It rides on OffshootClient's authenticated requests.
import type { OffshootClient } from './client.ts';
import type { CloneRequest, CloneResult, CopyJobRecord, DatastoreView, DiskRecord, DiskView, PoolRecord, TaskRecord, VmRecord } from '../vm/index.ts';

const enc = encodeURIComponent;

export interface VerifyResult {
  disk: string;
  contentId: string;
  contentHash: string;
  compared: { disk: string; contentId: string; contentHash: string; equal: boolean }[];
}

export class StorageClient {
  constructor(private readonly client: OffshootClient) {}

  listDatastores(): Promise<DatastoreView[]> {
    return this.client.call('GET', '/datastores');
  }
  addDatastore(name: string, path: string, host?: string): Promise<DatastoreView> {
    return this.client.call('POST', '/datastores', { name, path, ...(host ? { host } : {}) });
  }
  attachDatastore(name: string, host: string, path?: string): Promise<DatastoreView> {
    return this.client.call('POST', `/datastores/${enc(name)}/hosts`, { host, ...(path ? { path } : {}) });
  }
  getDatastore(name: string): Promise<DatastoreView> {
    return this.client.call('GET', `/datastores/${enc(name)}`);
  }
  removeDatastore(name: string): Promise<DatastoreView> {
    return this.client.call('DELETE', `/datastores/${enc(name)}`);
  }
  rescanDatastore(name: string): Promise<{ datastore: string; disks: DiskRecord[]; problems: { file: string; reason: string }[] }> {
    return this.client.call('POST', `/datastores/${enc(name)}/rescan`);
  }

  listDisks(datastore?: string): Promise<DiskRecord[]> {
    return this.client.call('GET', `/disks${datastore ? `?datastore=${enc(datastore)}` : ''}`);
  }
  createDisk(request: { datastore: string; name: string; size: string | number; format?: 'qcow2' | 'raw' }): Promise<DiskRecord> {
    return this.client.call('POST', '/disks', request);
  }
  importDisk(request: { datastore: string; name: string; source: string; format?: 'qcow2' | 'raw' }): Promise<DiskRecord> {
    return this.client.call('POST', '/disks/import', request);
  }
  getDisk(ref: string): Promise<DiskView> {
    return this.client.call('GET', `/disks/${enc(ref)}`);
  }
  deleteDisk(ref: string): Promise<DiskRecord> {
    return this.client.call('DELETE', `/disks/${enc(ref)}`);
  }
  resizeDisk(ref: string, size: string | number): Promise<DiskRecord> {
    return this.client.call('POST', `/disks/${enc(ref)}/resize`, { size });
  }
  verifyDisk(ref: string, against?: string): Promise<VerifyResult> {
    return this.client.call('POST', `/disks/${enc(ref)}/verify`, against ? { against } : {});
  }
  moveDisk(ref: string, datastore: string, wait = false): Promise<CopyJobRecord> {
    return this.client.call('POST', `/disks/${enc(ref)}/move${wait ? '?wait=true' : ''}`, { datastore });
  }

  cloneVm(ref: string, request: CloneRequest, wait = false): Promise<CloneResult> {
    return this.client.call('POST', `/vms/${enc(ref)}/clone${wait ? '?wait=true' : ''}`, request);
  }
  attachDisk(vm: string, disk: string): Promise<VmRecord> {
    return this.client.call('POST', `/vms/${enc(vm)}/disks`, { disk });
  }
  flattenVm(ref: string, disk?: string, wait = false): Promise<TaskRecord> {
    return this.client.call('POST', `/vms/${enc(ref)}/flatten${wait ? '?wait=true' : ''}`, disk ? { disk } : {});
  }

  listJobs(): Promise<CopyJobRecord[]> {
    return this.client.call('GET', '/jobs');
  }
  getJob(id: string, wait = false): Promise<CopyJobRecord> {
    return this.client.call('GET', `/jobs/${enc(id)}${wait ? '?wait=true' : ''}`);
  }
  pauseJob(id: string): Promise<CopyJobRecord> {
    return this.client.call('POST', `/jobs/${enc(id)}/pause`);
  }
  resumeJob(id: string): Promise<CopyJobRecord> {
    return this.client.call('POST', `/jobs/${enc(id)}/resume`);
  }
  cancelJob(id: string): Promise<CopyJobRecord> {
    return this.client.call('POST', `/jobs/${enc(id)}/cancel`);
  }

  listPools(): Promise<PoolRecord[]> {
    return this.client.call('GET', '/pools');
  }
  createPool(request: { name: string; vm: string; datastore: string; size: number }): Promise<PoolRecord> {
    return this.client.call('POST', '/pools', request);
  }
  getPool(ref: string): Promise<PoolRecord> {
    return this.client.call('GET', `/pools/${enc(ref)}`);
  }
  resizePool(ref: string, size: number): Promise<PoolRecord> {
    return this.client.call('POST', `/pools/${enc(ref)}/resize`, { size });
  }
  deletePool(ref: string): Promise<PoolRecord> {
    return this.client.call('DELETE', `/pools/${enc(ref)}`);
  }
}
