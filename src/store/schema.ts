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

export interface Database {
  vms: VmsTable;
  tasks: TasksTable;
  checkpoints: CheckpointsTable;
}
