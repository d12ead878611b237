// What a lab host runs as its agent, and what happens after it answers: the
// one place to change when `offshoot agent serve` lands.
//
// Today no host agent command exists, so each host runs the real daemon,
// `offshoot serve --listen ADDR:PORT`, with OFFSHOOT_HOME and
// OFFSHOOT_MEMORY_DIR set to the host's folders: a real HTTP server that
// boots real QEMU inside the host's namespace. With the agent, agentCommand
// becomes ['agent', 'serve', '--listen', `${address}:${port}`, '--home', home]
// (plus whatever it takes for the memory and datastore folders).
import { resolve } from 'node:path';
import { StorageClient, clientFromEnvironment } from '../client/index.ts';
import type { OffshootClient } from '../client/index.ts';

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
    argv: [OFFSHOOT_CLI, 'serve', '--listen', `${input.address}:${input.port}`],
    env: { OFFSHOOT_HOME: input.home, OFFSHOOT_MEMORY_DIR: input.memoryDir },
  };
}

/** A client of the host's agent, with the credential it made in its home (today: the daemon's token). */
export function agentClient(input: { url: string; home: string }): OffshootClient {
  return clientFromEnvironment({ OFFSHOOT_URL: input.url, OFFSHOOT_HOME: input.home });
}

/**
 * Runs once a host's agent answers. Today: registers the host's local
 * datastore folder with its daemon as "local" (the agent of issue 10 makes
 * its default datastore itself; then this goes).
 */
export async function afterAgentStart(input: AgentCommandInput & { url: string }): Promise<void> {
  const storage = new StorageClient(agentClient(input));
  const existing = await storage.listDatastores();
  if (!existing.some((d) => d.name === 'local')) await storage.addDatastore('local', input.datastoreDir);
}

export interface Registration {
  registered: boolean;
  reason: string;
}

/**
 * HOOK: registers a lab host with the control plane's daemon (the one of
 * OFFSHOOT_HOME), e.g. `offshoot host add NAME URL --token-file F`. Not done
 * yet: `host add` does not exist. Called by `lab up` for every host whose
 * agent runs; it must be idempotent (a host already registered stays so).
 */
export async function registerWithControlPlane(_host: { name: string; url: string; tokenFile: string }, _controlPlaneHome: string): Promise<Registration> {
  return { registered: false, reason: '`offshoot host add` does not exist yet (issue 10)' };
}
