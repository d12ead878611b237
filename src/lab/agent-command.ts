// What a lab host runs as its agent, and how it joins a control plane.
//
// Each host runs `offshoot agent serve --listen ADDR:PORT --home HOME
// --memory-dir MEM` inside its namespace: the agent protocol over HTTP with
// the host's own credential (HOME/agent-token). `lab up` then registers each
// host with the control plane of OFFSHOOT_HOME when a daemon serves it
// (`offshoot host add NAME URL --token-file HOME/agent-token`, idempotent).
import { readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { HostClient, clientFromEnvironment } from '../client/index.ts';
import { OffshootError } from '../common/index.ts';
import type { AgentClient } from '../protocol/index.ts';
import { httpAgentClient } from '../protocol/index.ts';

const OFFSHOOT_CLI = resolve(import.meta.dirname, '../../bin/offshoot');

export interface AgentCommandInput {
  name: string;
  address: string;
  port: number;
  home: string;
  memoryDir: string;
  datastoreDir: string;
}

export interface AgentCommand {
  argv: string[];
  /** Set on top of the lab's environment (from which OFFSHOOT_URL, _TOKEN, _HOME and _MEMORY_DIR are removed). */
  env: Record<string, string>;
}

export function agentCommand(input: AgentCommandInput): AgentCommand {
  return {
    argv: [OFFSHOOT_CLI, 'agent', 'serve', '--listen', `${input.address}:${input.port}`, '--home', input.home, '--memory-dir', input.memoryDir],
    env: { OFFSHOOT_HOME: input.home },
  };
}

/** The host's credential file (made by its agent at first start). */
export function agentTokenFile(home: string): string {
  return join(home, 'agent-token');
}

/** A protocol client of the host's agent, with its credential (epoch 0: reads only, until a control plane attaches it). */
export function agentClient(input: { name: string; url: string; home: string }): AgentClient {
  return httpAgentClient({ hostName: input.name, url: input.url, token: readFileSync(agentTokenFile(input.home), 'utf8').trim(), epoch: () => 0, timeoutMs: 5_000 });
}

/** Runs once a host's agent answers: nothing today (its control plane makes its default datastore when it adds the host). */
export async function afterAgentStart(_input: AgentCommandInput & { url: string }): Promise<void> {}

export interface Registration {
  registered: boolean;
  reason: string;
}

/**
 * Registers a lab host with the control plane of `controlPlaneHome` (`offshoot host add`), when a daemon
 * serves that home. Idempotent: a host already there with the same address stays as it is.
 */
export async function registerWithControlPlane(host: { name: string; url: string; tokenFile: string }, controlPlaneHome: string): Promise<Registration> {
  let hosts: HostClient;
  try {
    hosts = new HostClient(clientFromEnvironment({ OFFSHOOT_HOME: controlPlaneHome }));
    const existing = (await hosts.list()).find((h) => h.name === host.name);
    if (existing) return existing.url === host.url ? { registered: true, reason: 'already a host of the control plane' } : { registered: false, reason: `the control plane has another host named ${host.name} (${existing.url})` };
  } catch (err) {
    const code = err instanceof OffshootError ? err.code : '';
    return { registered: false, reason: code === 'DAEMON_NOT_FOUND' || code === 'DAEMON_UNREACHABLE' ? `no control plane runs for ${controlPlaneHome}` : (err as Error).message };
  }
  const token = readFileSync(host.tokenFile, 'utf8').trim();
  await hosts.add(host.name, host.url, token);
  return { registered: true, reason: 'added to the control plane' };
}
