// Request-scoped garbage-collection pins of one controller, with the shape of
// a Set (add, delete, has): what an operation in flight made or reads and no
// record names yet. Each path is also a row of the inventory's GC pins (holder
// `controller:<id>`, owned by this controller), written in the background in
// order, so every controller's collection keeps it; a controller that dies
// loses these pins when its lease expires (Controllers.reapExpired). This
// controller's own collection waits for the writes (`flushed`) and also reads
// the set itself. Pins that must outlive a controller (a task's, a pool's, a
// copy job's) are rows with their own holder (GcPins), not here.
import type { Logger } from '../common/index.ts';
import type { GcPins } from './coordination.ts';

export class PinSet implements Iterable<string> {
  private readonly local = new Set<string>();
  private writes: Promise<void> = Promise.resolve();

  constructor(
    private readonly pins: GcPins,
    readonly holder: string,
    private readonly owner: string,
    private readonly logger: Logger,
  ) {}

  add(path: string): this {
    if (this.local.has(path)) return this;
    this.local.add(path);
    this.queue(() => this.pins.add(this.holder, [path], this.owner));
    return this;
  }

  delete(path: string): boolean {
    const had = this.local.delete(path);
    if (had) this.queue(() => this.pins.remove(this.holder, [path]));
    return had;
  }

  has(path: string): boolean {
    return this.local.has(path);
  }

  get size(): number {
    return this.local.size;
  }

  [Symbol.iterator](): Iterator<string> {
    return this.local[Symbol.iterator]();
  }

  /** Resolves once every change made so far is in the inventory (or failed, logged). */
  flushed(): Promise<void> {
    return this.writes;
  }

  private queue(write: () => Promise<void>): void {
    this.writes = this.writes.then(write).catch((err: unknown) => this.logger.warn({ err, holder: this.holder }, 'cannot write a GC pin to the inventory'));
  }
}
