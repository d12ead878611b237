// Identifiers for VMs and tasks.
import { randomUUID } from 'node:crypto';

export function newVmId(): string {
  return randomUUID();
}

export function newTaskId(): string {
  return randomUUID();
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** Whether a string has the form of a VM id (tasks of other kinds target other ids: a copy job's, a pool's). */
export function isVmId(id: string): boolean {
  return UUID.test(id);
}
