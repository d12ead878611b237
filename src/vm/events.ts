// The event bus of the VM engine: VM state changes, task updates and copy-job
// progress. The API streams these to clients as server-sent events.
// Connected to the inventory's shared bus (SharedEventBus: LISTEN/NOTIFY on
// PostgreSQL, in process on SQLite), every event any controller of the fleet
// publishes reaches `subscribe`rs here, each once; `subscribeLocal` gets only
// this controller's own events (its metrics count what it did, not what the
// fleet did). Publishing never waits: delivery here is synchronous, and the
// shared bus is written in the background, in order (events published while
// the database is unreachable do not reach the other controllers).
import { EventEmitter } from 'node:events';
import type { Logger } from '../common/index.ts';
import type { SharedEventBus } from './coordination.ts';
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
  private readonly all = new EventEmitter();
  private readonly local = new EventEmitter();
  private shared: SharedEventBus<EngineEvent> | undefined;
  private detach: (() => void) | undefined;
  private sending: Promise<void> = Promise.resolve();
  private logger: Logger | undefined;
  /** Events this controller published, which the shared bus hands back once. */
  private readonly own = new WeakSet<EngineEvent>();

  constructor() {
    this.all.setMaxListeners(0);
    this.local.setMaxListeners(0);
  }

  /** From now on events go to (and come from) every controller on the shared bus. */
  connect(shared: SharedEventBus<EngineEvent>, logger?: Logger): void {
    this.detach?.();
    this.shared = shared;
    this.logger = logger;
    // The shared bus hands back this controller's own events (already delivered here) and the others' as they arrive.
    this.detach = shared.subscribe((event) => {
      if (this.own.has(event)) this.own.delete(event);
      else this.all.emit('event', event);
    });
  }

  /** Stops using the shared bus (it is closed by whoever opened it); waits for the events being sent. */
  async disconnect(): Promise<void> {
    this.detach?.();
    this.detach = undefined;
    this.shared = undefined;
    await this.sending;
  }

  publish(event: EngineEvent): void {
    this.local.emit('event', event);
    this.all.emit('event', event);
    const shared = this.shared;
    if (!shared) return;
    this.own.add(event);
    // In order; a bus that cannot reach the database loses the event for the other controllers (logged).
    this.sending = this.sending.then(() => shared.publish(event)).catch((err: unknown) => this.logger?.warn({ err: (err as Error).message, type: event.type }, 'cannot send an event to the other controllers'));
  }

  /** Every event of the fleet (this controller's and the others'). */
  subscribe(listener: (event: EngineEvent) => void): () => void {
    this.all.on('event', listener);
    return () => this.all.off('event', listener);
  }

  /** Only the events this controller published. */
  subscribeLocal(listener: (event: EngineEvent) => void): () => void {
    this.local.on('event', listener);
    return () => this.local.off('event', listener);
  }
}
