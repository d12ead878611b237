// The host's event log (VM exits, operations ending), numbered so that a
// controller that polls `events` with the last number it saw gets each event
// once, and learns (resync) when it fell so far behind that some were dropped:
// it then reconciles from hostInfo's list of VMs instead.
import type { AgentEvent } from './schemas.ts';

type NewEvent = AgentEvent extends infer E ? (E extends AgentEvent ? Omit<E, 'seq'> : never) : never;

const KEEP = 1000;

export class EventLog {
  private readonly events: AgentEvent[] = [];
  private seq = 0;
  private readonly waiters = new Set<() => void>();

  append(event: NewEvent): AgentEvent {
    this.seq += 1;
    const stored = { ...event, seq: this.seq } as AgentEvent;
    this.events.push(stored);
    if (this.events.length > KEEP) this.events.splice(0, this.events.length - KEEP);
    for (const wake of [...this.waiters]) wake();
    return stored;
  }

  get lastSeq(): number {
    return this.seq;
  }

  /** Events after `afterSeq`, waiting up to `waitMs` for one; `resync` when some were already dropped. */
  async since(afterSeq: number, waitMs: number): Promise<{ events: AgentEvent[]; nextSeq: number; resync: boolean }> {
    if (afterSeq > this.seq) return { events: [], nextSeq: this.seq, resync: true };
    if (afterSeq === this.seq && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, waitMs);
        timer.unref();
        const waiters = this.waiters;
        function done() {
          clearTimeout(timer);
          waiters.delete(done);
          resolve();
        }
        waiters.add(done);
      });
    }
    const oldest = this.events[0]?.seq ?? this.seq + 1;
    return { events: this.events.filter((e) => e.seq > afterSeq), nextSeq: this.seq, resync: afterSeq < oldest - 1 };
  }
}
