// The control plane's side of the protocol: an AgentClient has one method per
// call (plain calls answer their result, operations answer OperationInfo) and
// is implemented in process (inProcessClient, over an AgentEndpoint, with the
// same JSON round trip as the wire) or over HTTP (http-client.ts).
// runOperation starts an operation and follows it to its end; follow
// reattaches to one by id (after a controller restart, from its journal).
import { randomUUID } from 'node:crypto';
import { OffshootError } from '../common/index.ts';
import type { CallName, CallRequest, CallResult, OperationEvent, OperationInfo, OperationName } from './calls.ts';
import { AGENT_CALLS, operationInfoSchema } from './calls.ts';
import type { AgentEndpoint, RequestMeta } from './endpoint.ts';
import { parseAnswer } from './parse.ts';
import { fromWireError } from './wire-error.ts';

export type AgentMethods = {
  [K in CallName]: (request: CallRequest<K>) => Promise<K extends OperationName ? OperationInfo : CallResult<K>>;
};

export interface AgentClient extends AgentMethods {
  /** The host this client talks to (named in errors). */
  readonly hostName: string;
}

export function newOperationId(): string {
  return randomUUID();
}

/** Every call of an AgentClient, built from one `send`. */
export function clientFromSend(hostName: string, send: (name: CallName, request: unknown) => Promise<unknown>): AgentClient {
  const client: Record<string, unknown> = { hostName };
  for (const name of Object.keys(AGENT_CALLS) as CallName[]) client[name] = (request: unknown) => send(name, request);
  return client as unknown as AgentClient;
}

/** An agent in this process, behind the same validation and JSON round trip as over the wire. */
export function inProcessClient(endpoint: AgentEndpoint, options: { hostName: string; epoch: () => number }): AgentClient {
  return clientFromSend(options.hostName, async (name, request) => {
    const meta: RequestMeta = { epoch: options.epoch(), idempotencyKey: AGENT_CALLS[name].readOnly ? undefined : randomUUID() };
    const answer = await endpoint.dispatch(name, JSON.parse(JSON.stringify(request ?? {})), meta);
    return answer === undefined ? undefined : parseAnswer(options.hostName, name, AGENT_CALLS[name].kind === 'operation' ? operationInfoSchema : AGENT_CALLS[name].result, JSON.parse(JSON.stringify(answer)));
  });
}

export interface FollowOptions {
  onProgress?: (event: OperationEvent, operation: OperationInfo) => void;
  /** Cancels the operation on the host when aborted (it then ends as it reports). */
  signal?: AbortSignal;
  /** How long each poll waits on the host for news. */
  pollMs?: number;
}

/** An operation that was cancelled on the host. */
export class OperationCancelledError extends OffshootError {
  constructor(operation: OperationInfo, host: string) {
    super('TASK_CANCELLED', `${operation.call} on host ${host} was cancelled`, { operationId: operation.operationId, host }, 409);
  }
}

/** Follows an operation until it ends: its result, or its error rebuilt with the host's code. */
export async function follow<K extends OperationName>(client: AgentClient, operationId: string, options: FollowOptions = {}): Promise<CallResult<K>> {
  let afterSeq = 0;
  let cancelled = false;
  const cancel = () => {
    cancelled = true;
    void client.cancelOperation({ operationId }).catch(() => undefined);
  };
  if (options.signal?.aborted) cancel();
  else options.signal?.addEventListener('abort', cancel, { once: true });
  try {
    while (true) {
      // Without a progress listener only the end matters: one long poll instead of one per event.
      const { operation, events } = await client.getOperation({ operationId, afterSeq, waitMs: options.pollMs ?? 10_000, until: options.onProgress ? 'event' : 'end' });
      for (const event of events) options.onProgress?.(event, operation);
      afterSeq = Math.max(afterSeq, operation.seq);
      if (operation.state === 'succeeded') return parseAnswer(client.hostName, operation.call, AGENT_CALLS[operation.call as K].result, operation.result) as CallResult<K>;
      if (operation.state === 'failed' && operation.error) throw fromWireError(operation.error, client.hostName);
      if (operation.state === 'cancelled' || (operation.state === 'failed' && cancelled)) throw operation.error ? fromWireError(operation.error, client.hostName) : new OperationCancelledError(operation, client.hostName);
      if (operation.state === 'failed') throw new OffshootError('INTERNAL', `${operation.call} on host ${client.hostName} failed without an error`, { operationId }, 500);
    }
  } finally {
    options.signal?.removeEventListener('abort', cancel);
  }
}

/**
 * Waits until an operation on the host has ended, or the host no longer knows it (OPERATION_NOT_FOUND), for at
 * most `ms`. Answers false if it was still running then; any other error of the host is thrown.
 */
export async function waitForOperationEnd(client: AgentClient, operationId: string, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    try {
      const { operation } = await client.getOperation({ operationId, afterSeq: 0, waitMs: Math.max(0, Math.min(30_000, deadline - Date.now())), until: 'end' });
      if (operation.state !== 'running') return true;
    } catch (error) {
      if (error instanceof OffshootError && error.code === 'OPERATION_NOT_FOUND') return true;
      throw error;
    }
  }
  return false;
}

/** Starts operation `name` (with a fresh operation id unless the request names one) and follows it to its end. */
export async function runOperation<K extends OperationName>(client: AgentClient, name: K, request: Omit<CallRequest<K>, 'operationId'> & { operationId?: string }, options: FollowOptions = {}): Promise<CallResult<K>> {
  const operationId = request.operationId ?? newOperationId();
  const method = client[name] as unknown as (r: unknown) => Promise<OperationInfo>;
  await method({ ...request, operationId });
  return follow<K>(client, operationId, options);
}
