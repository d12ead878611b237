// Admission of migrations under the hosts' limits (issue 12 part 6): a host
// sends at most maxOutgoing and receives at most maxIncoming migrations at
// once (policy.ts); a migration beyond waits in a queue, FIFO, instead of
// failing. Both live in the inventory, so every controller shares them:
//   - the queue is a table (store/migration-policies.ts), ordered by a serial
//     number; an entry counts only while its task runs, so a dead
//     controller's entries stop counting once its tasks are taken over;
//   - a slot is a claim of the coordinator named `migrate-out:<host>:<i>` or
//     `migrate-in:<host>:<i>` (i below the limit), long (renewed by the
//     controller's beat) and expiring with it, so a dead controller's slots
//     free themselves after a lease.
// An entry takes its slots only when no older entry waits for one of the
// same hosts in the same direction (first come, first served per host), and
// all of them or none (a group's members count one each). While it waits its
// task's progress says `queued`, its position and what it waits for. A cancel
// (its signal), or the loss of its task to another controller, takes it out
// of the queue.
import { OffshootError, sleep } from '../../common/index.ts';
import type { VmClaim } from '../coordination.ts';
import type { EngineContext } from '../engine-context.ts';
import type { TaskContext } from '../tasks.ts';
import { FLEET_SCOPE, resolvePolicy } from './policy.ts';
import type { MigrationPolicyStore } from './policy.ts';

/** Slots a migration needs: how many it sends from each host and receives at each, by host id. */
export interface SlotNeeds {
  out: Record<string, number>;
  in: Record<string, number>;
}

export interface MigrationQueueEntry {
  seq: number;
  taskId: string;
  owner: string;
  needs: SlotNeeds;
  enqueuedAt: string;
}

/** The queue's rows in the inventory (store/migration-policies.ts). */
export interface MigrationQueueStore {
  enqueue(taskId: string, owner: string, needs: SlotNeeds): Promise<MigrationQueueEntry>;
  /** Entries whose task still runs, oldest first (rows of ended tasks are removed). */
  queued(): Promise<MigrationQueueEntry[]>;
  dequeue(taskId: string): Promise<void>;
}

export type MigrationControlStore = MigrationPolicyStore & MigrationQueueStore;

/** A migration needs more slots of a host at once than its limit allows: it could never run. HTTP 409. */
export class MigrationLimitError extends OffshootError {
  constructor(message: string, details: Record<string, unknown>) {
    super('MIGRATION_LIMIT_EXCEEDED', message, details, 409);
  }
}

/** What the queue reports while a migration waits (the task's progress detail). */
export interface QueuedProgress {
  phase: 'queued';
  /** 1: next in line for its hosts. */
  position: number;
  waitingFor: string;
}

/** The slots a migration holds; release them when it ends. */
export interface HeldSlots {
  keys: string[];
  queuedMs: number;
  release(): Promise<void>;
}

const POLL_MS = 250;

export function singleNeeds(sourceId: string, destinationId: string): SlotNeeds {
  return { out: { [sourceId]: 1 }, in: { [destinationId]: 1 } };
}

export function addNeeds(needs: SlotNeeds, sourceId: string, destinationId: string): SlotNeeds {
  needs.out[sourceId] = (needs.out[sourceId] ?? 0) + 1;
  needs.in[destinationId] = (needs.in[destinationId] ?? 0) + 1;
  return needs;
}

function overlaps(a: SlotNeeds, b: SlotNeeds): string | null {
  const out = Object.keys(a.out).find((h) => b.out[h]);
  if (out) return `out:${out}`;
  const into = Object.keys(a.in).find((h) => b.in[h]);
  return into ? `in:${into}` : null;
}

export class MigrationAdmission {
  /** Woken when a slot of this controller frees (others' are seen by the poll). */
  private wakers = new Set<() => void>();

  constructor(
    private readonly ctx: EngineContext,
    private readonly store: MigrationControlStore,
  ) {}

  /** The limit of each host the needs name, in each direction (from the policies in the inventory). */
  private async limits(needs: SlotNeeds): Promise<{ out: Record<string, number>; in: Record<string, number> }> {
    const fleet = (await this.store.getPolicy(FLEET_SCOPE))?.policy;
    const of = async (hostId: string) => {
      const own = (await this.store.getPolicy(hostId))?.policy;
      return resolvePolicy({ source: own, destination: own, fleet });
    };
    const out: Record<string, number> = {};
    const into: Record<string, number> = {};
    for (const h of Object.keys(needs.out)) out[h] = (await of(h)).maxOutgoing;
    for (const h of Object.keys(needs.in)) into[h] = (await of(h)).maxIncoming;
    return { out, in: into };
  }

  private hostName(id: string): string {
    return this.ctx.fleet.hosts().find((h) => h.id === id)?.name ?? id;
  }

  /** Refuses (MIGRATION_LIMIT_EXCEEDED) needs that exceed a limit by themselves: they would wait forever. */
  async check(needs: SlotNeeds): Promise<void> {
    const limits = await this.limits(needs);
    for (const [dir, word, field] of [['out', 'sends', 'maxOutgoing'], ['in', 'receives', 'maxIncoming']] as const) {
      for (const [h, n] of Object.entries(needs[dir])) {
        const limit = limits[dir][h] ?? 1;
        if (n > limit) throw new MigrationLimitError(`host ${this.hostName(h)} ${word} at most ${limit} migration(s) at once (${field}); this one needs ${n}`, { host: this.hostName(h), [field]: limit, needed: n });
      }
    }
  }

  /** Waits in the queue until every slot `needs` names is held; aborts with `signal` (out of the queue, no slot kept). */
  async admit(task: TaskContext, needs: SlotNeeds, signal: AbortSignal): Promise<HeldSlots> {
    const t0 = performance.now();
    const coordinator = this.ctx.coordinator;
    await this.store.enqueue(task.taskId, coordinator.controllerId, needs);
    let reported = '';
    try {
      for (;;) {
        signal.throwIfAborted();
        const queue = await this.store.queued();
        const mine = queue.findIndex((e) => e.taskId === task.taskId);
        const ahead = queue.slice(0, Math.max(0, mine)).filter((e) => overlaps(e.needs, needs) !== null);
        let waitingFor: string | null = null;
        if (ahead.length > 0) {
          const [dir, host] = (overlaps(ahead[0]!.needs, needs) as string).split(':') as [string, string];
          waitingFor = `${ahead.length} older migration(s) queued for host ${this.hostName(host)} (${dir === 'out' ? 'outgoing' : 'incoming'})`;
        } else {
          const taken = await this.tryTake(task.taskId, needs);
          if (Array.isArray(taken)) {
            await this.store.dequeue(task.taskId);
            const keys = taken.map((c) => c.vmId);
            return { keys, queuedMs: Math.round(performance.now() - t0), release: () => this.release(taken) };
          }
          waitingFor = taken;
        }
        const message = `queued (position ${ahead.length + 1}): waiting for ${waitingFor}`;
        if (message !== reported) {
          reported = message;
          await task.progress(0, message, { phase: 'queued', position: ahead.length + 1, waitingFor } satisfies QueuedProgress);
        }
        await this.pause(signal);
      }
    } catch (err) {
      await this.store.dequeue(task.taskId).catch(() => undefined);
      throw err;
    }
  }

  /** Takes every slot or none: the claims, or what is missing. */
  private async tryTake(taskId: string, needs: SlotNeeds): Promise<VmClaim[] | string> {
    const limits = await this.limits(needs);
    const held: VmClaim[] = [];
    for (const [dir, word, field] of [['out', 'sending', 'maxOutgoing'], ['in', 'receiving', 'maxIncoming']] as const) {
      for (const [h, n] of Object.entries(needs[dir])) {
        const limit = limits[dir][h] ?? 1;
        let got = 0;
        for (let i = 0; i < limit && got < n; i++) {
          const claim = await this.ctx.coordinator.claim(`migrate-${dir}:${h}:${i}`, `migration task ${taskId}`, { long: true }).catch(() => null);
          if (claim) {
            held.push(claim);
            got++;
          }
        }
        if (got < n) {
          await this.release(held, false);
          return `a free slot: host ${this.hostName(h)} is ${word} ${limit} migration(s), its ${field}`;
        }
      }
    }
    return held;
  }

  private async release(claims: VmClaim[], wake = true): Promise<void> {
    for (const c of claims) await this.ctx.coordinator.release(c).catch(() => undefined);
    if (wake) for (const w of [...this.wakers]) w();
  }

  private async pause(signal: AbortSignal): Promise<void> {
    let wake!: () => void;
    const woken = new Promise<void>((r) => (wake = r));
    const onAbort = () => wake();
    this.wakers.add(wake);
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await Promise.race([woken, sleep(POLL_MS)]);
    } finally {
      this.wakers.delete(wake);
      signal.removeEventListener('abort', onAbort);
    }
  }
}
