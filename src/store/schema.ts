// The inventory's table types, as Kysely sees them. JSON columns hold text.
import type { Generated } from 'kysely';

export interface VmsTable {
  id: string;
  name: string;
  state: string;
  state_reason: string | null;
  spec: string;
  runtime: string | null;
  created_at: string;
  updated_at: string;
}

export interface TasksTable {
  seq: Generated<number>;
  id: string;
  kind: string;
  target_id: string;
  target_name: string;
  state: string;
  progress: number;
  message: string;
  result: string | null;
  error: string | null;
  created_at: string;
  updated_at: string;
}

export interface CheckpointsTable {
  id: string;
  name: string;
  vm_id: string;
  vm_name: string;
  path: string;
  state: string;
  memory_bytes: number;
  file_bytes: number | null;
  spec: string;
  created_at: string;
}

export interface DatastoresTable {
  name: string;
  path: string;
  created_at: string;
}

export interface DisksTable {
  id: string;
  name: string;
  datastore: string;
  path: string;
  format: string;
  content_id: string;
  parent_id: string | null;
  virtual_size: number;
  read_only: number;
  created_at: string;
}

/** A record kept as one JSON document (copy jobs, pools). */
export interface DocumentTable {
  id: string;
  name: string | null;
  doc: string;
  created_at: string;
}

export interface Database {
  vms: VmsTable;
  tasks: TasksTable;
  checkpoints: CheckpointsTable;
  datastores: DatastoresTable;
  disks: DisksTable;
  copy_jobs: DocumentTable;
  pools: DocumentTable;
}
