// The in-process event bus of the VM engine: VM state changes, task updates
// and copy-job progress.
// The API streams these to clients as server-sent events.
import { EventEmitter } from 'node:events';
import type { TaskRecord, VmRecord } from './records.ts';
import type { VmState } from './state.ts';
import type { CopyJobRecord } from './storage/records.ts';

export type EngineEvent =
  | { type: 'vm.created'; vm: VmRecord; at: string }
  | { type: 'vm.state'; vm: VmRecord; previous: VmState; at: string }
  | { type: 'vm.deleted'; vmId: string; name: string; at: string }
  | { type: 'task'; task: TaskRecord; at: string }
  | { type: 'copy-job'; job: CopyJobRecord; at: string };

export class EventBus {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  publish(event: EngineEvent): void {
    this.emitter.emit('event', event);
  }

  subscribe(listener: (event: EngineEvent) => void): () => void {
    this.emitter.on('event', listener);
    return () => this.emitter.off('event', listener);
  }
}
