// The agent side of the protocol, whatever the transport: validates each
// request against its schema, refuses a request from a stale epoch, runs plain
// calls (answering a retried one with an idempotency key from its first
// answer) and operations (through the OperationTable), and serves the
// operation calls themselves. The in-process client and the HTTP server both
// dispatch here, so they behave the same.
import { OffshootError } from '../common/index.ts';
import type { CallName, CallResult, OperationInfo, OperationName, ParsedCallRequest, PlainCallName } from './calls.ts';
import { AGENT_CALLS, isOperationCall } from './calls.ts';
import type { OperationContext } from './operations.ts';
import { OperationTable } from './operations.ts';
import { parseWith } from './parse.ts';

type OperationCallsServedByTable = 'getOperation' | 'cancelOperation' | 'listOperations';

/** What an agent implements: one handler per call (operations get a context with progress and a cancel signal). */
export type AgentHandlers = {
  [K in Exclude<CallName, OperationCallsServedByTable>]: K extends OperationName ? (request: ParsedCallRequest<K>, ctx: OperationContext) => Promise<CallResult<K>> : (request: ParsedCallRequest<K>) => Promise<CallResult<K>>;
};

export interface RequestMeta {
  /** The epoch of the host record the caller holds (absent only on reads). */
  epoch?: number;
  idempotencyKey?: string;
}

export interface EpochKeeper {
  /** The agent's current epoch (0 before a control plane attached it). */
  current(): number;
}

export class StaleEpochError extends OffshootError {
  constructor(given: number, current: number) {
    super('STALE_EPOCH', `the request carries host epoch ${given} but this agent is at epoch ${current}: the host was re-added since; reload the host record`, { given, current }, 409);
  }
}

const IDEMPOTENCY_TTL_MS = 10 * 60 * 1000;
const IDEMPOTENCY_MAX = 10_000;

export class AgentEndpoint {
  readonly operations: OperationTable;
  private readonly answered = new Map<string, { call: string; at: number; answer: Promise<unknown> }>();

  constructor(
    private readonly handlers: AgentHandlers,
    private readonly epochs: EpochKeeper,
    options: { operations?: OperationTable } = {},
  ) {
    this.operations = options.operations ?? new OperationTable();
  }

  /** Runs one call; `raw` is the request as it arrived (validated here). Throws OffshootErrors. */
  async dispatch(name: string, raw: unknown, meta: RequestMeta = {}): Promise<unknown> {
    if (!Object.hasOwn(AGENT_CALLS, name)) throw new OffshootError('NOT_FOUND', `the agent has no call "${name}"`, { kind: 'call', ref: name }, 404);
    const call = name as CallName;
    const def = AGENT_CALLS[call];
    const request = parseWith(`${call} request`, def.request, raw);
    // Reads are answered whatever the epoch (a stale controller learns nothing it could act on); changes are fenced.
    if (!def.readOnly && meta.epoch !== undefined && meta.epoch < this.epochs.current()) throw new StaleEpochError(meta.epoch, this.epochs.current());
    if (!def.readOnly && meta.epoch === undefined && call !== 'attach') throw new OffshootError('INVALID_INPUT', `call ${call} changes the host and needs the caller's host epoch`, { call }, 400);
    switch (call) {
      case 'getOperation': {
        const r = request as ParsedCallRequest<'getOperation'>;
        return this.operations.get(r.operationId, r.afterSeq, r.waitMs, r.until);
      }
      case 'cancelOperation':
        return this.operations.cancel((request as ParsedCallRequest<'cancelOperation'>).operationId);
      case 'listOperations':
        return { operations: this.operations.list() };
    }
    if (isOperationCall(call)) return this.startOperation(call, request as ParsedCallRequest<OperationName>);
    const handler = this.handlers[call as Exclude<PlainCallName, OperationCallsServedByTable>] as (r: unknown) => Promise<unknown>;
    return this.once(call, meta.idempotencyKey, () => handler(request));
  }

  private startOperation(call: OperationName, request: ParsedCallRequest<OperationName>): Promise<OperationInfo> {
    const handler = this.handlers[call] as (r: unknown, ctx: OperationContext) => Promise<unknown>;
    return this.operations.start(call, request.operationId, (ctx) => handler(request, ctx));
  }

  /** A call with an idempotency key answers a retry with the first answer (for ten minutes). */
  private once(call: string, key: string | undefined, run: () => Promise<unknown>): Promise<unknown> {
    if (!key) return run();
    const now = Date.now();
    const seen = this.answered.get(key);
    if (seen && now - seen.at < IDEMPOTENCY_TTL_MS) {
      if (seen.call !== call) throw new OffshootError('INVALID_INPUT', `idempotency key ${key} was used for a ${seen.call} call`, { key }, 400);
      return seen.answer;
    }
    const answer = run();
    // A failure is not remembered: the caller may retry it for real.
    answer.catch(() => this.answered.delete(key));
    this.answered.set(key, { call, at: now, answer });
    if (this.answered.size > IDEMPOTENCY_MAX) {
      for (const [k, v] of this.answered) if (now - v.at >= IDEMPOTENCY_TTL_MS || this.answered.size > IDEMPOTENCY_MAX) this.answered.delete(k);
    }
    return answer;
  }
}
