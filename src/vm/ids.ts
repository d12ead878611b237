// Identifiers for VMs and tasks.
import { randomUUID } from 'node:crypto';

export function newVmId(): string {
  return randomUUID();
}

export function newTaskId(): string {
  return randomUUID();
}
