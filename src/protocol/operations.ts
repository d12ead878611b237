// Operations on the agent side: long work with an id the caller chose, a
// progress log with sequence numbers, a result or a wire error, and a cancel
// signal. Starting an operation whose id already exists returns the existing
// one (a retried request, or a controller reattaching after a restart), so the
// work never runs twice. Each operation is also written to a journal folder
// when it starts and ends: an agent that restarts marks the operations it was
// running as failed (TASK_INTERRUPTED), so a caller following one learns that
// its work stopped instead of waiting for ever. A journal file is written
// aside and renamed into place, as before the work starts; what it is written
// into is one of the empty files made ahead in the background, not a file
// created then: creating a file is the slow part of such a write (~1 ms on the
// ext4 of the test machine, against ~20 us to open an existing one; creations
// in one folder queue behind each other, and behind them the other file work
// of the process), which put 20 to 50 ms (up to 180) between the start of an
// operation and its work when 20 hand-outs started at once. Into a spare file
// the write is synchronous (a few tens of us, where each step through the
// thread pool waits for a turn of a busy event loop); with no spare left it
// is written into a new file as before.
import { randomBytes } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { OffshootError, writeFileAtomic } from '../common/index.ts';
import type { OperationEvent, OperationInfo } from './calls.ts';
import { toWireError } from './wire-error.ts';

export interface OperationContext {
  readonly operationId: string;
  /** Aborted when the operation is cancelled; the work should stop at its next safe point. */
  readonly signal: AbortSignal;
  progress(fraction: number, message: string, data?: Record<string, unknown>): void;
}

interface Running {
  info: OperationInfo;
  events: OperationEvent[];
  controller: AbortController;
  changed: Set<() => void>;
}

/** How long an ended operation stays readable. */
const KEEP_ENDED_MS = 60 * 60 * 1000;
/** Progress events kept per operation (older ones are dropped; the newest state is always in `info`). */
const MAX_EVENTS = 200;
/** Empty files kept ready in the journal folder for journal writes (topped up when fewer than half are left). */
const SPARE_FILES = 64;

export class OperationNotFoundError extends OffshootError {
  constructor(operationId: string) {
    super('OPERATION_NOT_FOUND', `no operation ${operationId} on this host (it never started here, or ended long ago)`, { operationId }, 404);
  }
}

/** A journal file's operation, or null if it is not one (empty, cut short, or not JSON). */
function parseJournal(text: string): OperationInfo | null {
  try {
    const info = JSON.parse(text) as OperationInfo | null;
    return info && typeof info === 'object' && typeof info.operationId === 'string' && typeof info.state === 'string' ? info : null;
  } catch {
    return null;
  }
}

export class OperationTable {
  private readonly ops = new Map<string, Running>();
  /** Empty files in the journal folder that journal writes are written into (see persist). */
  private readonly spares: string[] = [];
  private makingSpares = false;
  private journalMade = false;

  constructor(private readonly journalDir?: string) {}

  /**
   * Marks operations a previous process left running as failed; call once at start. Returns their ids.
   */
  async recover(): Promise<string[]> {
    if (!this.journalDir) return [];
    await mkdir(this.journalDir, { recursive: true, mode: 0o700 });
    const interrupted: string[] = [];
    for (const name of await readdir(this.journalDir)) {
      if (name.includes('.json.tmp-')) await rm(join(this.journalDir, name), { force: true });
      if (!name.endsWith('.json')) continue;
      const path = join(this.journalDir, name);
      const info = parseJournal(await readFile(path, 'utf8').catch(() => ''));
      if (!info) {
        // Unreadable (a write cut short by a full disk before journals were written atomically): nothing to resume.
        await rm(path, { force: true });
        continue;
      }
      if (info.state === 'running') {
        info.state = 'failed';
        info.endedAt = new Date().toISOString();
        info.error = { code: 'TASK_INTERRUPTED', message: `operation ${info.call} was interrupted: the agent restarted while it ran`, details: { operationId: info.operationId } };
        interrupted.push(info.operationId);
      }
      if (info.endedAt && Date.now() - Date.parse(info.endedAt) > KEEP_ENDED_MS) {
        await rm(path, { force: true });
        continue;
      }
      this.ops.set(info.operationId, { info, events: [], controller: new AbortController(), changed: new Set() });
      await this.persist(info);
    }
    return interrupted;
  }

  /** Starts `work` as operation `operationId` of `call`, or returns the operation of that id if it exists. */
  async start(call: string, operationId: string, work: (ctx: OperationContext) => Promise<unknown>): Promise<OperationInfo> {
    this.prune();
    const existing = this.ops.get(operationId);
    if (existing) {
      if (existing.info.call !== call) throw new OffshootError('INVALID_INPUT', `operation id ${operationId} is already used by a ${existing.info.call} operation`, { operationId, call: existing.info.call }, 400);
      return { ...existing.info };
    }
    const now = new Date().toISOString();
    const op: Running = {
      info: { operationId, call, state: 'running', progress: 0, message: 'started', seq: 0, startedAt: now, endedAt: null },
      events: [],
      controller: new AbortController(),
      changed: new Set(),
    };
    this.ops.set(operationId, op);
    await this.persist(op.info);
    const ctx: OperationContext = {
      operationId,
      signal: op.controller.signal,
      progress: (fraction, message, data) => {
        if (op.info.state !== 'running') return;
        const progress = Math.max(0, Math.min(1, Number.isFinite(fraction) ? fraction : 0));
        this.push(op, { progress, message, ...(data ? { data } : {}) });
      },
    };
    void (async () => {
      try {
        const result = await work(ctx);
        this.end(op, op.controller.signal.aborted && result === undefined ? 'cancelled' : 'succeeded', { result: result ?? null });
      } catch (err) {
        const wire = toWireError(op.controller.signal.aborted && !(err instanceof OffshootError) ? op.controller.signal.reason ?? err : err);
        this.end(op, op.controller.signal.aborted && wire.code === 'TASK_CANCELLED' ? 'cancelled' : 'failed', { error: wire });
      }
    })();
    return { ...op.info };
  }

  /** The operation and its events after `afterSeq`, waiting up to `waitMs` for something new. */
  async get(operationId: string, afterSeq = 0, waitMs = 0, until: 'event' | 'end' = 'event'): Promise<{ operation: OperationInfo; events: OperationEvent[] }> {
    const op = this.ops.get(operationId);
    if (!op) throw new OperationNotFoundError(operationId);
    const deadline = Date.now() + waitMs;
    const waiting = () => op.info.state === 'running' && (until === 'end' || op.info.seq <= afterSeq);
    while (waiting() && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, Math.max(1, deadline - Date.now()));
        timer.unref();
        function done() {
          clearTimeout(timer);
          op?.changed.delete(done);
          resolve();
        }
        op.changed.add(done);
      });
    }
    return { operation: { ...op.info }, events: op.events.filter((e) => e.seq > afterSeq) };
  }

  /** Asks a running operation to stop (its work sees the signal); returns its current state. */
  cancel(operationId: string): OperationInfo {
    const op = this.ops.get(operationId);
    if (!op) throw new OperationNotFoundError(operationId);
    if (op.info.state === 'running' && !op.controller.signal.aborted) {
      op.controller.abort(new OffshootError('TASK_CANCELLED', `operation ${op.info.call} was cancelled`, { operationId }, 409));
      this.push(op, { progress: op.info.progress, message: 'cancelling' });
    }
    return { ...op.info };
  }

  list(): OperationInfo[] {
    this.prune();
    return [...this.ops.values()].map((o) => ({ ...o.info }));
  }

  /** Whether any operation of these calls is running (e.g. to hold garbage collection). */
  running(calls?: readonly string[]): boolean {
    return [...this.ops.values()].some((o) => o.info.state === 'running' && (!calls || calls.includes(o.info.call)));
  }

  /** Waits until every running operation has ended (used when an agent closes). */
  async drain(): Promise<void> {
    while (this.running()) await new Promise((r) => setTimeout(r, 50));
  }

  private push(op: Running, event: { progress: number; message: string; data?: Record<string, unknown> }): void {
    op.info.seq += 1;
    op.info.progress = event.progress;
    op.info.message = event.message;
    op.events.push({ seq: op.info.seq, ...event, at: new Date().toISOString() });
    if (op.events.length > MAX_EVENTS) op.events.splice(0, op.events.length - MAX_EVENTS);
    for (const wake of [...op.changed]) wake();
  }

  private end(op: Running, state: 'succeeded' | 'failed' | 'cancelled', outcome: { result?: unknown; error?: OperationInfo['error'] }): void {
    op.info.state = state;
    op.info.endedAt = new Date().toISOString();
    if (state === 'succeeded') op.info.progress = 1;
    if (outcome.result !== undefined) op.info.result = outcome.result;
    if (outcome.error) op.info.error = outcome.error;
    this.push(op, { progress: op.info.progress, message: state === 'succeeded' ? 'done' : (outcome.error?.message ?? state) });
    void this.persist(op.info).catch(() => undefined);
  }

  private async persist(info: OperationInfo): Promise<void> {
    if (!this.journalDir) return;
    if (!this.journalMade) {
      await mkdir(this.journalDir, { recursive: true, mode: 0o700 });
      this.journalMade = true;
    }
    // Written aside and renamed into place: a full disk or a crash never leaves a half-written journal.
    const path = join(this.journalDir, `${info.operationId}.json`);
    const data = JSON.stringify(info);
    const spare = this.spares.pop();
    this.makeSpares();
    if (spare !== undefined) {
      try {
        // The spare exists: opening it (truncated) creates nothing.
        writeFileSync(spare, data);
        renameSync(spare, path);
        return;
      } catch {
        await rm(spare, { force: true }).catch(() => undefined);
      }
    }
    await writeFileAtomic(path, data);
  }

  /** Tops the spare files up in the background, one at a time (their names are temporary files' names, which recover() removes). */
  private makeSpares(): void {
    const dir = this.journalDir;
    if (!dir || this.makingSpares || this.spares.length >= SPARE_FILES / 2) return;
    this.makingSpares = true;
    void (async () => {
      while (this.spares.length < SPARE_FILES) {
        const spare = join(dir, `spare-${randomBytes(6).toString('hex')}.json.tmp-${process.pid}`);
        await writeFile(spare, '', { mode: 0o600, flag: 'wx' });
        this.spares.push(spare);
      }
    })()
      .catch(() => undefined)
      .finally(() => (this.makingSpares = false));
  }

  private prune(): void {
    const now = Date.now();
    for (const [id, op] of this.ops) {
      if (op.info.endedAt && now - Date.parse(op.info.endedAt) > KEEP_ENDED_MS) {
        this.ops.delete(id);
        if (this.journalDir) void rm(join(this.journalDir, `${id}.json`), { force: true }).catch(() => undefined);
      }
    }
  }
}
