// The engine's side of the fleet's coordination (issue 11): one controller
// among several over one inventory. It names this controller, takes claims
// (one operation per VM, the garbage lock, a host's monitor) with an owner and
// an expiry, keeps the long ones alive, and runs the controller's beat every
// third of the lease:
//   - renew the leases of the tasks this controller runs, and find out which it
//     lost (another controller took them over while this one was cut off);
//   - renew the claims it holds;
//   - take over running tasks whose owner's lease expired (it died), one
//     controller per task, and hand each to the engine's recovery;
//   - forget controllers whose lease expired (their request-scoped pins go).
// A separate one-second poll, only while this controller runs cancellable
// tasks, picks up cancel requests another controller wrote into their rows.
// SQLite (one controller) runs the same code: its takeovers find only the
// tasks of this controller's previous life.
import { randomUUID } from 'node:crypto';
import { OffshootError, silentLogger, sleep } from '../common/index.ts';
import type { Logger } from '../common/index.ts';
import { BusyError } from './coordination.ts';
import type { CoordinationStore, VmClaim } from './coordination.ts';
import type { TaskRecord } from './records.ts';

/** Default lease of tasks, claims and controllers. */
export const DEFAULT_LEASE_MS = 30_000;

/** What the coordinator asks of the engine at each beat. */
export interface BeatHandlers {
  /** Renews the leases of this controller's running tasks. */
  renewTasks(): Promise<void>;
  /** A running task whose owner died, now leased to this controller: roll it forward or back. */
  takeOver(task: TaskRecord): Promise<void>;
  /** Tasks of this controller that someone asked to cancel (polled every second while `cancellable()`). */
  cancelRequested(taskIds: string[]): void;
  cancellable(): boolean;
}

export interface ClaimOptions {
  /** How long to keep trying while another holds the claim (0: fail at once with BUSY). */
  waitMs?: number;
  /** Keep the claim alive with the beat until released (for claims held across a long operation). */
  long?: boolean;
}

export class Coordinator {
  readonly controllerId: string;
  readonly leaseMs: number;
  readonly store: CoordinationStore;
  private readonly logger: Logger;
  /** Claims kept alive by the beat, by key. */
  private readonly held = new Map<string, VmClaim>();
  private timer: NodeJS.Timeout | undefined;
  private cancelTimer: NodeJS.Timeout | undefined;
  private beating: Promise<void> = Promise.resolve();
  private readonly takeovers = new Set<Promise<void>>();
  private handlers: BeatHandlers | undefined;
  private stopped = false;

  constructor(options: { controllerId?: string; leaseMs?: number; store: CoordinationStore; logger?: Logger }) {
    this.controllerId = options.controllerId ?? `controller-${randomUUID()}`;
    this.leaseMs = options.leaseMs ?? DEFAULT_LEASE_MS;
    this.store = options.store;
    this.logger = options.logger ?? silentLogger;
  }

  /**
   * Claims `key` (a VM id, or `gc`, `host:ID`, `pool:ID`, …) for `operation`. While another holds it, tries again
   * every 50-100 ms for up to `waitMs`, then throws BUSY.
   */
  async claim(key: string, operation: string, options: ClaimOptions = {}): Promise<VmClaim> {
    const deadline = Date.now() + (options.waitMs ?? 0);
    for (;;) {
      try {
        const claim = await this.store.claims.acquire(key, this.controllerId, operation, this.leaseMs);
        if (options.long) this.held.set(key, claim);
        return claim;
      } catch (err) {
        if (!(err instanceof BusyError) || Date.now() >= deadline || this.stopped) throw err;
        await sleep(50 + Math.random() * 50);
      }
    }
  }

  /** Releases a claim (never one acquired later by someone else). */
  async release(claim: VmClaim): Promise<void> {
    if (this.held.get(claim.vmId)?.token === claim.token) this.held.delete(claim.vmId);
    await this.store.claims.release(claim);
  }

  /** Runs `fn` holding the claim on `key`, released afterwards. */
  async withClaim<T>(key: string, operation: string, options: ClaimOptions, fn: () => Promise<T>): Promise<T> {
    const claim = await this.claim(key, operation, options);
    try {
      return await fn();
    } finally {
      await this.release(claim).catch((err: unknown) => this.logger.warn({ err, key }, 'cannot release a claim; it expires by itself'));
    }
  }

  /**
   * Drops what this controller's previous life (a process with the same id that died) held: its claims and its
   * request-scoped pins. Call once at start, before this life takes any.
   */
  async forgetPreviousLife(): Promise<void> {
    const claims = await this.store.claims.releaseOwnedBy(this.controllerId);
    const pins = await this.store.pins.removeOwnedBy(this.controllerId);
    if (claims || pins) this.logger.info({ claims, pins }, 'released the claims and pins of this controller\'s previous life');
  }

  /** Starts the beat. */
  start(handlers: BeatHandlers): void {
    this.handlers = handlers;
    this.timer = setInterval(() => this.tick(), Math.max(20, Math.floor(this.leaseMs / 3)));
    this.timer.unref();
    this.cancelTimer = setInterval(() => {
      if (!this.handlers?.cancellable()) return;
      this.store.leases.cancelRequested(this.controllerId).then(
        (ids) => ids.length > 0 && this.handlers?.cancelRequested(ids),
        () => undefined,
      );
    }, 1_000);
    this.cancelTimer.unref();
  }

  /** One beat now (tests call it to skip the wait; the timer calls it otherwise). */
  beat(): Promise<void> {
    this.beating = this.beating.then(() => this.beatOnce()).catch((err: unknown) => this.logger.warn({ err }, 'controller beat failed'));
    return this.beating;
  }

  private tick(): void {
    void this.beat();
  }

  private async beatOnce(): Promise<void> {
    if (this.stopped || !this.handlers) return;
    const handlers = this.handlers;
    await handlers.renewTasks();
    for (const [key, claim] of [...this.held]) {
      try {
        this.held.set(key, await this.store.claims.renew(claim, this.leaseMs));
      } catch (err) {
        if (err instanceof OffshootError && err.code === 'LEASE_LOST') {
          this.held.delete(key);
          this.logger.warn({ key, operation: claim.operation }, 'a claim this controller held was taken over after it expired');
        } else throw err;
      }
    }
    const dead = await this.store.controllers.reapExpired();
    if (dead.length) this.logger.info({ controllers: dead }, 'controllers whose lease expired were removed');
    for (;;) {
      if (this.stopped) return;
      const tasks = await this.store.leases.claimExpiredTasks(this.controllerId, this.leaseMs, 10);
      // In the background: a recovery may take longer than a beat, and the beat renews the leases it now holds.
      for (const task of tasks) this.takeOver(task);
      if (tasks.length < 10) return;
    }
  }

  /** Hands a task this controller now leases to the engine's recovery, in the background. */
  takeOver(task: TaskRecord): void {
    if (!this.handlers) return;
    this.logger.warn({ taskId: task.id, kind: task.kind, target: task.targetName }, 'taking over a task whose controller stopped');
    const done = this.handlers.takeOver(task).catch((err: unknown) => this.logger.error({ err, taskId: task.id }, 'cannot take over a task'));
    this.takeovers.add(done);
    void done.finally(() => this.takeovers.delete(done));
  }

  /** Resolves when the takeovers started so far have finished (tests, shutdown). */
  async settled(): Promise<void> {
    while (this.takeovers.size > 0) await Promise.allSettled([...this.takeovers]);
  }

  /** Stops the beat (claims held go with their expiry; tasks are drained by their runner). */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.timer);
    clearInterval(this.cancelTimer);
    await this.beating;
    await this.settled();
  }
}
