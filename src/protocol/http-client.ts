// The agent protocol over HTTP, client side: an AgentClient whose calls are
// POSTs to one host's agent. Every failure names the host: an agent that is
// down or does not answer in time is HOST_UNREACHABLE (never a hang), an
// answer that is not the protocol is AGENT_PROTOCOL, and an error the agent
// sent keeps its code, details and cause. Calls that change something carry a
// fresh idempotency key, so the retries after a dropped connection cannot do
// the work twice. A dropped connection is retried up to DROPPED_RETRIES times:
// a pooled keep-alive connection can be closed by the agent just as a request
// goes out on it (the agent closes one idle for 5 s, the client reuses one
// idle for up to 4 s), and under load (event loops late by a second or more,
// `bench group`) the next pooled one was often closed too: a group of 8 failed
// on `getOperation: UND_ERR_SOCKET` after one retry.
import { randomUUID } from 'node:crypto';
import { OffshootError } from '../common/index.ts';
import type { CallName } from './calls.ts';
import { AGENT_CALLS, operationInfoSchema } from './calls.ts';
import type { AgentClient } from './client.ts';
import { clientFromSend } from './client.ts';
import { EPOCH_HEADER, IDEMPOTENCY_HEADER } from './http-server.ts';
import { parseAnswer } from './parse.ts';
import { fromWireError, wireErrorSchema } from './wire-error.ts';

export interface HttpAgentOptions {
  /** The host's name in the control plane (named in every error). */
  hostName: string;
  /** Base URL of the agent, e.g. http://10.213.0.11:7100 */
  url: string;
  token: string;
  /** The host record's epoch, read at each call. */
  epoch: () => number;
  /** Time limit of a call that is not a long poll. */
  timeoutMs?: number;
}

/** How many times a call whose connection was dropped before an answer goes again (each time on another connection). */
export const DROPPED_RETRIES = 3;

export class HostUnreachableError extends OffshootError {
  constructor(host: string, url: string, reason: string) {
    super('HOST_UNREACHABLE', `host ${host} (${url}) is unreachable: ${reason}`, { host, url, reason }, 502);
  }
}

function timeoutFor(name: CallName, request: Record<string, unknown>, base: number): number {
  const wait = typeof request.waitMs === 'number' ? request.waitMs : 0;
  const exec = name === 'exec' && typeof request.timeoutMs === 'number' ? request.timeoutMs : 0;
  // Plain calls that do real work on the host (a fork's switch-over, a live snapshot) may take a while.
  return base + wait + exec;
}

export function httpAgentClient(options: HttpAgentOptions): AgentClient {
  const base = options.url.replace(/\/+$/, '');
  const timeoutMs = options.timeoutMs ?? 60_000;
  const send = async (name: CallName, request: unknown): Promise<unknown> => {
    const body = JSON.stringify(request ?? {});
    const def = AGENT_CALLS[name];
    const headers: Record<string, string> = { 'content-type': 'application/json', authorization: `Bearer ${options.token}`, [EPOCH_HEADER]: String(options.epoch()) };
    if (!def.readOnly) headers[IDEMPOTENCY_HEADER] = randomUUID();
    const limit = timeoutFor(name, (request ?? {}) as Record<string, unknown>, timeoutMs);
    let response: Response | undefined;
    for (let attempt = 0; attempt <= DROPPED_RETRIES && !response; attempt++) {
      try {
        response = await fetch(`${base}/v1/${name}`, { method: 'POST', headers, body, signal: AbortSignal.timeout(limit) });
      } catch (err) {
        const e = err as Error & { cause?: { code?: string } };
        const code = e.cause?.code ?? e.name;
        // Again when an established connection was dropped; the idempotency key makes it safe.
        if (attempt < DROPPED_RETRIES && (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET')) continue;
        const reason = e.name === 'TimeoutError' ? `no answer to ${name} within ${limit} ms` : `${name}: ${code ?? ''} ${e.message}`.trim();
        throw new HostUnreachableError(options.hostName, base, reason);
      }
    }
    if (!response) throw new HostUnreachableError(options.hostName, base, `${name}: the connection was dropped ${DROPPED_RETRIES + 1} times`);
    let json: unknown;
    try {
      json = await response.json();
    } catch {
      throw new OffshootError('AGENT_PROTOCOL', `host ${options.hostName} (${base}) answered ${name} with HTTP ${response.status} and a body that is not JSON`, { host: options.hostName, status: response.status }, 502);
    }
    if (!response.ok) {
      const wire = wireErrorSchema.safeParse(json);
      if (!wire.success) throw new OffshootError('AGENT_PROTOCOL', `host ${options.hostName} answered ${name} with HTTP ${response.status} and no error this controller understands`, { host: options.hostName, status: response.status }, 502);
      throw fromWireError(wire.data, options.hostName);
    }
    return parseAnswer(options.hostName, name, def.kind === 'operation' ? operationInfoSchema : def.result, json);
  };
  return clientFromSend(options.hostName, send);
}
