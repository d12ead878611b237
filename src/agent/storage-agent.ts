// The storage half of the host-agent seam: everything that touches disk files
// and the block layer of running VMs for datastores, disks, clones and pools.
// Like HostAgent, every argument and result is plain JSON-safe data, so a
// remote host can serve it over HTTP later.
import type { DatastoreUsage, DiskMeta, ScannedDisk } from '../storage/index.ts';
import type { CopyRunFile, CopyRunProgress, CopyRunResult } from './copy-runner.ts';
import type { VmDisk } from './types.ts';

export interface DiskChainEntry {
  path: string;
  format: string;
  virtualSize: number;
  actualSize: number | null;
}

export interface FrozenDisk {
  diskId: string;
  format: 'qcow2' | 'raw';
  /** The frozen image and its backing chain, top first: all read-only from now on. */
  chain: string[];
  /** Content id of the frozen top (stable for a base that never changes). */
  contentId: string;
  virtualSize: number;
}

export interface FreezeResult {
  /** The VM's disks after the freeze (a new delta over each frozen image; unchanged ones as they were). */
  disks: VmDisk[];
  frozen: FrozenDisk[];
  /** Renames done and deltas made, to undo if what follows fails. */
  moves: { from: string; to: string }[];
  deltas: string[];
}

export interface StorageAgent {
  /** The datastores the control plane knows (at start and after a change): exactly their folders are allowed roots. */
  useDatastores(paths: string[]): Promise<void>;
  /** Places a datastore folder (refusing `/`, system folders, the home, and places in or around another datastore) and creates it. */
  initDatastore(path: string, name: string): Promise<{ path: string }>;
  datastoreUsage(path: string): Promise<DatastoreUsage>;
  scanDatastore(path: string): Promise<{ disks: ScannedDisk[]; problems: { path: string; reason: string }[] }>;
  /** Removes the datastore's marker and its empty folders (never a disk). */
  forgetDatastore(path: string): Promise<void>;

  createDisk(path: string, format: 'qcow2' | 'raw', sizeBytes: number): Promise<void>;
  /** Converts any qcow2, raw or monolithic vmdk file into a standalone image at `target` (checked first). */
  importDisk(source: string, target: string, format: 'qcow2' | 'raw'): Promise<{ virtualSize: number; sourceFormat: string }>;
  resizeDisk(path: string, sizeBytes: number): Promise<void>;
  diskChain(path: string): Promise<DiskChainEntry[]>;
  writeDiskMeta(path: string, meta: DiskMeta): Promise<void>;
  /** Removes a disk file, its sidecar and any copy leftovers. */
  removeDisk(path: string): Promise<void>;
  /** Content hash of a file's bytes (same definition as a verified copy's). */
  hashDisk(path: string): Promise<string>;
  /** Content id of a host base (derived from the immutable file's identity). */
  baseContentId(path: string): Promise<string>;

  /** Freezes a VM's writable disks into read-only bases (a live snapshot when it runs). */
  freezeDisks(vmId: string, disks: VmDisk[], running: boolean): Promise<FreezeResult>;
  /** Undoes a freeze of a stopped VM (puts renamed images back). */
  undoFreeze(result: FreezeResult): Promise<void>;
  /** Creates a qcow2 delta over `backing` (whose chain follows). */
  createDelta(path: string, backing: { path: string; format: 'qcow2' | 'raw' }): Promise<void>;
  /** Points a copied qcow2 at another backing file without touching its data (rebase -u). */
  relinkDisk(path: string, backing: { path: string; format: 'qcow2' | 'raw' } | null): Promise<void>;
  /** Removes a folder Offshoot made (a pool slot) with whatever is left in it. */
  removeFolder(path: string): Promise<void>;
  /** Renames a file within one file system (a pool copy into a clone's place). */
  moveFile(from: string, to: string): Promise<void>;

  /** Copies one file in a worker process (resumable from its progress file); 'stopped' when `signal` aborts. */
  runCopy(file: CopyRunFile, onProgress: (p: CopyRunProgress) => void, signal?: AbortSignal): Promise<CopyRunResult>;
  /** Removes a copy's target, progress file and lock. */
  cancelCopy(target: string): Promise<void>;

  /** Streams the chain below a running VM's disk into it; the disk stands alone afterwards. */
  streamWholeChain(vmId: string, diskId: string, onProgress?: (p: { offset: number; length: number }) => void): Promise<void>;
}
