// Rows to records for the VM inventory's tables (VMs, tasks, checkpoints):
// JSON columns parsed, states checked, so a row no code wrote fails loudly
// with INVENTORY_CORRUPT instead of flowing on.
import type { Selectable } from 'kysely';
import type { CheckpointRecord, TaskRecord, VmRecord } from '../vm/index.ts';
import { isTaskState, isVmState } from '../vm/index.ts';
import { InventoryCorruptError } from './errors.ts';
import type { CheckpointsTable, TasksTable, VmsTable } from './schema.ts';

export function vmFromRow(row: Selectable<VmsTable>): VmRecord {
  if (!isVmState(row.state)) throw new InventoryCorruptError(`VM ${row.id} has unknown state ${row.state}`, { id: row.id, state: row.state });
  return {
    id: row.id,
    name: row.name,
    state: row.state,
    stateReason: row.state_reason,
    // Rows from before hosts have none: the daemon assigns its own host to them at start.
    hostId: row.host ?? '',
    spec: JSON.parse(row.spec) as VmRecord['spec'],
    runtime: row.runtime === null ? null : (JSON.parse(row.runtime) as VmRecord['runtime']),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    version: row.version,
  };
}

export function taskFromRow(row: Selectable<TasksTable>): TaskRecord {
  if (!isTaskState(row.state)) throw new InventoryCorruptError(`task ${row.id} has unknown state ${row.state}`, { id: row.id, state: row.state });
  return {
    id: row.id,
    kind: row.kind,
    targetId: row.target_id,
    targetName: row.target_name,
    state: row.state,
    progress: row.progress,
    message: row.message,
    result: row.result === null ? null : (JSON.parse(row.result) as unknown),
    error: row.error === null ? null : (JSON.parse(row.error) as TaskRecord['error']),
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

export function checkpointFromRow(row: Selectable<CheckpointsTable>): CheckpointRecord {
  return {
    id: row.id,
    name: row.name,
    vmId: row.vm_id,
    vmName: row.vm_name,
    hostId: row.host ?? '',
    file: row.file ?? row.path,
    path: row.path,
    state: row.state as CheckpointRecord['state'],
    memoryBytes: row.memory_bytes,
    fileBytes: row.file_bytes,
    spec: JSON.parse(row.spec) as CheckpointRecord['spec'],
    createdAt: row.created_at,
  };
}
