// The lab's three commands. `up N` makes (or repairs) hosts lab1..labN and
// starts each agent that is not running, leaving running ones alone; `status`
// reads the state file and looks at the processes and namespaces; `down`
// removes everything the lab made: the processes in its namespaces (agents
// and their QEMUs), the namespaces, links and bridge, the memory folders, the
// host folders and the state file. `down` also finds namespaces, links and
// memory folders by the prefix, so it cleans up after a lab whose state file
// was lost (for a folder without a lab, only when the prefix is given).
import { existsSync, readdirSync } from 'node:fs';
import { rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { InvalidInputError, OffshootError, defaultHome } from '../common/index.ts';
import { listNamespaces } from '../net/index.ts';
import { agentClient, agentTokenFile, registerWithControlPlane } from './agent-command.ts';
import type { Registration } from './agent-command.ts';
import { isAgentRunning, startAgent, stopNamespaceProcesses } from './agent-process.ts';
import { bridgeAddress, bridgeName, defaultLabDir, hostLayout, hostName, labOptions, maxHosts } from './config.ts';
import type { LabOptions } from './config.ts';
import { ensureBridge, ensureHostNetwork, findLabNetwork, removeBridge, removeHostNetwork } from './network.ts';
import { emptyState, readState, removeState, writeState } from './state.ts';
import type { HostState, LabState } from './state.ts';

export type HostAction = 'created' | 'restarted' | 'running';

export interface HostStatus {
  name: string;
  namespace: string;
  address: string;
  url: string;
  pid: number | null;
  running: boolean;
  home: string;
  memoryDir: string;
  datastoreDir: string;
  log: string;
}

export interface UpResult {
  dir: string;
  bridge: string;
  bridgeAddress: string;
  hosts: Array<HostStatus & { action: HostAction; registration: Registration }>;
}

export interface DownResult {
  stoppedPids: number[];
  removedNamespaces: string[];
  removedLinks: string[];
  removedFiles: string[];
}

/** Options given on the command line, checked against the lab already in the folder. */
function resolveOptions(input: Partial<LabOptions>): { options: LabOptions; state: LabState | undefined } {
  const dir = labOptions(input).dir;
  const state = readState(dir);
  if (!state) return { options: labOptions(input), state };
  const options = labOptions({ dir, prefix: state.prefix, subnet: state.subnet, port: state.port });
  for (const key of ['prefix', 'subnet', 'port'] as const) {
    if (input[key] !== undefined && labOptions({ ...options, [key]: input[key] })[key] !== options[key]) {
      throw new InvalidInputError(`the lab in ${dir} was made with ${key} ${options[key]}, not ${input[key]}: use the same, or \`lab down\` first`, { dir, [key]: options[key] });
    }
  }
  return { options, state };
}

function statusOf(host: HostState): HostStatus {
  const running = isAgentRunning(host.agent);
  return { name: host.name, namespace: host.namespace, address: host.address, url: host.url, pid: host.agent?.pid ?? null, running, home: host.home, memoryDir: host.memoryDir, datastoreDir: host.datastoreDir, log: host.log };
}

function assertRoot(): void {
  if (process.getuid?.() !== 0) throw new OffshootError('LAB_NEEDS_ROOT', 'the lab makes network namespaces and links: run it as root', {}, 403);
}

/** Makes or repairs hosts lab1..labN; starts the agents that are not running. */
export async function labUp(count: number, input: Partial<LabOptions> = {}, controlPlaneHome = defaultHome()): Promise<UpResult> {
  assertRoot();
  const { options, state: found } = resolveOptions(input);
  if (!Number.isInteger(count) || count < 1 || count > maxHosts(options)) throw new InvalidInputError(`invalid host count ${count}: 1..${maxHosts(options)} for subnet ${options.subnet}`, { count });
  const state = found ?? emptyState(options);
  await writeState(options.dir, state);
  await ensureBridge(options);
  const hosts: UpResult['hosts'] = [];
  for (let i = 1; i <= count; i++) {
    const layout = hostLayout(options, hostName(i));
    let host = state.hosts.find((h) => h.name === layout.name);
    const isNew = !host;
    if (!host) {
      host = { ...layout, agent: null };
      state.hosts.push(host);
      await writeState(options.dir, state);
    }
    await ensureHostNetwork(options, host);
    let action: HostAction = 'running';
    if (!isAgentRunning(host.agent)) {
      // An agent process the state file does not know (its record was lost) would hold the port;
      // its QEMUs stay: the new agent re-adopts them.
      await stopNamespaceProcesses(host.namespace, { keepQemu: true });
      host.agent = await startAgent(host);
      await writeState(options.dir, state);
      action = isNew ? 'created' : 'restarted';
    }
    const registration = await registerWithControlPlane({ name: host.name, url: host.url, tokenFile: agentTokenFile(host.home) }, controlPlaneHome);
    hosts.push({ ...statusOf(host), action, registration });
  }
  return { dir: options.dir, bridge: bridgeName(options), bridgeAddress: bridgeAddress(options), hosts };
}

/** The hosts of the lab in the folder (none if there is no lab). */
export async function labStatus(input: Partial<LabOptions> = {}): Promise<HostStatus[]> {
  const { state } = resolveOptions(input);
  return (state?.hosts ?? []).map(statusOf);
}

/** Whether each host's agent answers its API (a short request each). */
export async function agentsAnswering(hosts: HostStatus[]): Promise<Record<string, boolean>> {
  const entries = await Promise.all(
    hosts.map(async (h) => {
      if (!h.running) return [h.name, false] as const;
      try {
        await agentClient(h).hostInfo({});
        return [h.name, true] as const;
      } catch {
        return [h.name, false] as const;
      }
    }),
  );
  return Object.fromEntries(entries);
}

/** Removes everything of the lab in the folder (and anything named for its prefix). */
export async function labDown(input: Partial<LabOptions> = {}): Promise<DownResult> {
  assertRoot();
  const { options, state } = resolveOptions(input);
  const result: DownResult = { stoppedPids: [], removedNamespaces: [], removedLinks: [], removedFiles: [] };
  // No lab in a folder of the caller's choosing: sweep by prefix only when the prefix was given
  // (the default prefix belongs to the default folder's lab).
  if (!state && input.prefix === undefined && options.dir !== defaultLabDir()) return result;
  const network = await findLabNetwork(options.prefix);
  const namespaces = new Set([...(state?.hosts ?? []).map((h) => h.namespace), ...network.namespaces]);
  const existing = new Set(await listNamespaces());
  for (const namespace of namespaces) {
    if (existing.has(namespace)) result.stoppedPids.push(...(await stopNamespaceProcesses(namespace)));
  }
  for (const namespace of namespaces) {
    const rootLink = namespace; // a host's root veth end carries its namespace's name
    const had = existing.has(namespace);
    await removeHostNetwork({ namespace, rootLink });
    if (had) result.removedNamespaces.push(namespace);
  }
  const links = await findLabNetwork(options.prefix);
  for (const link of links.links.filter((l) => l !== bridgeName(options))) await removeHostNetwork({ namespace: link, rootLink: link });
  await removeBridge(options);
  result.removedLinks.push(...network.links);
  const memoryDirs = readdirSync('/dev/shm').filter((e) => e.startsWith(`offshoot-lab-${options.prefix}-`)).map((e) => join('/dev/shm', e));
  const folders = [...memoryDirs, ...(state?.hosts ?? []).map((h) => h.memoryDir), join(options.dir, 'hosts')];
  for (const path of new Set(folders)) {
    if (!existsSync(path)) continue;
    await rm(path, { recursive: true, force: true });
    result.removedFiles.push(path);
  }
  if (state) {
    await removeState(options.dir);
    result.removedFiles.push(join(options.dir, 'lab.json'));
  }
  await rmdir(options.dir).catch(() => undefined); // only if empty: the folder may be the user's
  return result;
}
