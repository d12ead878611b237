// A lab host's agent process: started detached inside the host's namespace
// (nsenter --net: only the network namespace changes, so the agent sees the
// machine's files and /dev/shm), its output appended to the host's log; known
// by pid and start time; ready when its HTTP API answers from the root
// namespace. Stopping a host ends every process in its namespace: the agent
// and the QEMUs it started there (SIGTERM, then SIGKILL after a grace time).
import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { basename } from 'node:path';
import { mkdir, open } from 'node:fs/promises';
import { OffshootError, isProcessAlive, sleep } from '../common/index.ts';
import { namespacePids } from '../net/index.ts';
import { afterAgentStart, agentClient, agentCommand } from './agent-command.ts';
import type { HostLayout } from './config.ts';
import type { AgentProcess } from './state.ts';

const READY_TIMEOUT_MS = 60_000;
const LOG_TAIL_BYTES = 2048;

/** The agent could not be started or did not answer in time. */
export class LabAgentStartError extends OffshootError {
  constructor(host: string, reason: string, log: string, logTail: string) {
    super('LAB_AGENT_START_FAILED', `the agent of lab host ${host} ${reason}; see ${log}${logTail ? `: ${logTail.split('\n').filter(Boolean).slice(-3).join(' | ')}` : ''}`, { host, log, logTail }, 500);
  }
}

export function processStartTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return undefined;
  }
}

/** Whether the recorded agent process still runs (same pid and start time, not a zombie). */
export function isAgentRunning(agent: AgentProcess | null): boolean {
  return agent !== null && isProcessAlive(agent.pid) && processStartTime(agent.pid) === agent.startTime;
}

/** The inode of a network namespace, to compare a process's /proc/PID/ns/net with a named namespace. */
export function namespaceInode(path: string): number | undefined {
  try {
    return statSync(path).ino;
  } catch {
    return undefined;
  }
}

export function processInNamespace(pid: number, namespace: string): boolean {
  const inode = namespaceInode(`/run/netns/${namespace}`);
  return inode !== undefined && namespaceInode(`/proc/${pid}/ns/net`) === inode;
}

async function logTail(log: string): Promise<string> {
  try {
    const handle = await open(log, 'r');
    try {
      const { size } = await handle.stat();
      const start = Math.max(0, size - LOG_TAIL_BYTES);
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(size - start), 0, size - start, start);
      return buffer.subarray(0, bytesRead).toString('utf8');
    } finally {
      await handle.close();
    }
  } catch {
    return '';
  }
}

/** The environment an agent inherits: the lab's, without what points at another daemon or home. */
function agentEnvironment(extra: Record<string, string>): NodeJS.ProcessEnv {
  const { OFFSHOOT_URL: _u, OFFSHOOT_TOKEN: _t, OFFSHOOT_HOME: _h, OFFSHOOT_MEMORY_DIR: _m, ...env } = process.env;
  return { ...env, ...extra };
}

/** Starts the host's agent in its namespace and waits until it answers; returns its process. */
export async function startAgent(host: HostLayout): Promise<AgentProcess> {
  for (const dir of [host.folder, host.home, host.datastoreDir]) await mkdir(dir, { recursive: true, mode: 0o700 });
  await mkdir(host.memoryDir, { recursive: true, mode: 0o700 });
  const input = { name: host.name, address: host.address, port: host.port, home: host.home, memoryDir: host.memoryDir, datastoreDir: host.datastoreDir };
  const command = agentCommand(input);
  const out = openSync(host.log, 'a');
  let child;
  try {
    child = spawn('nsenter', [`--net=/run/netns/${host.namespace}`, '--', ...command.argv], { detached: true, stdio: ['ignore', out, out], env: agentEnvironment(command.env) });
  } finally {
    closeSync(out);
  }
  const spawned = await new Promise<Error | undefined>((resolve) => {
    child.once('spawn', () => resolve(undefined));
    child.once('error', resolve);
  });
  if (spawned || child.pid === undefined) throw new LabAgentStartError(host.name, `could not be run (${spawned?.message ?? 'no pid'})`, host.log, '');
  child.on('error', () => undefined);
  child.unref();
  const pid = child.pid;
  const startTime = processStartTime(pid) ?? '';
  const deadline = Date.now() + READY_TIMEOUT_MS;
  while (true) {
    if (!isProcessAlive(pid)) throw new LabAgentStartError(host.name, 'exited at start', host.log, await logTail(host.log));
    try {
      await agentClient(host).hostInfo({});
      break;
    } catch {
      // no token yet, or not listening yet
    }
    if (Date.now() > deadline) {
      await stopProcesses([pid]);
      throw new LabAgentStartError(host.name, `did not answer at ${host.url} within ${READY_TIMEOUT_MS / 1000} s`, host.log, await logTail(host.log));
    }
    await sleep(100);
  }
  await afterAgentStart({ ...input, url: host.url });
  return { pid, startTime };
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when all are gone. */
export async function stopProcesses(pids: number[], graceMs = 10_000): Promise<void> {
  const signal = (sig: NodeJS.Signals) => {
    for (const pid of pids) {
      try {
        process.kill(pid, sig);
      } catch {
        // gone already
      }
    }
  };
  signal('SIGTERM');
  const deadline = Date.now() + graceMs;
  while (pids.some(isProcessAlive) && Date.now() < deadline) await sleep(50);
  if (pids.some(isProcessAlive)) {
    signal('SIGKILL');
    const hard = Date.now() + 5_000;
    while (pids.some(isProcessAlive) && Date.now() < hard) await sleep(50);
  }
}

/** By its executable: Offshoot's QEMUs rename themselves (comm is "offshoot-<vm id>"). */
function isQemu(pid: number): boolean {
  try {
    return basename(readlinkSync(`/proc/${pid}/exe`)).startsWith('qemu-system');
  } catch {
    return false;
  }
}

/** Ends every process in the namespace (the agent and, unless `keepQemu`, its QEMUs); returns their pids. */
export async function stopNamespaceProcesses(namespace: string, options: { keepQemu?: boolean } = {}): Promise<number[]> {
  const pids = (await namespacePids(namespace)).filter((pid) => pid !== process.pid && !(options.keepQemu && isQemu(pid)));
  if (pids.length > 0) await stopProcesses(pids);
  return pids;
}
